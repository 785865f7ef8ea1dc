#!/usr/bin/env bash
# Repack the shared flash-attn wheel (62.6 MB zip) as an unpacked site tree in tar.xz (~17 MB):
# the GPU machine takes at most 64 MiB per call, and the CUDA fatbin compresses 13x under xz,
# so flash-attn can travel beside the other wheels instead of alone.
# Usage: scripts/gpu/pack-flash-attn.sh [WHEEL] [OUT_DIR]   (defaults: ../shared/wheels/flash_attn-*.whl, .gpu)
set -euo pipefail
wheel=${1:-$(ls "$(git rev-parse --show-toplevel)"/../shared/wheels/flash_attn-*.whl | head -1)}
out=${2:-.gpu}
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
unzip -q "$wheel" -d "$tmp/site"
tar -C "$tmp/site" -cf - . | xz -T0 -6 > "$out/flash_attn-site.tar.xz"
ls -la "$out/flash_attn-site.tar.xz"
