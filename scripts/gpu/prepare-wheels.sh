#!/usr/bin/env bash
# Prepare, on the CPU machine, what the GPU machine lacks for the quantized rows, in .gpu/ (git-ignored):
#   .gpu/wheels/*.whl  bitsandbytes 0.50.2 (only its CPU and CUDA 13 libraries kept: 43 MB -> 7 MB),
#                      optimum 2.3.0, and gptqmodel 7.6.0 with the small pure-Python packages it imports
#                      (logbar, device-smi, tokenicer, defuser) built here from their sdists (PyPI has no wheels).
#   .gpu/src/          pypcre's sdist and Debian 12's pcre2.h (10.42, the GPU's libpcre2-8.so.0 version):
#                      gptqmodel imports `pcre` when it is imported, and pypcre is C code, built there.
# The GPU image already has torch, transformers, peft, accelerate, numpy, safetensors, packaging, requests,
# threadpoolctl, pillow, jinja2, ninja, pyarrow (KINDS.md). Left out on purpose, because loading and training
# a pre-quantized model never imports them (checked by training a GPTQ model on the CPU without them):
# gptqmodel's datasets, dill, torchao, maturin and protobuf requirements and its numpy==2.2.6 pin.
# Then carry .gpu and run scripts/gpu/install-wheels.sh there.
# Usage: scripts/gpu/prepare-wheels.sh   (PYTHON=... picks the local Python with pip; default .venv/bin/python)
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
python=${PYTHON:-.venv/bin/python}
wheels=.gpu/wheels
src=.gpu/src
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
rm -rf "$wheels" "$src"
mkdir -p "$wheels" "$src"

pip_quiet() { "$python" -m pip "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }; }

# Binary wheels for the GPU's Python 3.12 on x86-64 Linux.
pip_quiet download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$tmp/binary" bitsandbytes==0.50.2 optimum==2.3.0
mv "$tmp"/binary/optimum-*.whl "$wheels/"

# bitsandbytes ships one library per CUDA/ROCm/XPU version; torch 2.11+cu130 loads libbitsandbytes_cuda130.
"$python" - "$tmp"/binary/bitsandbytes-*.whl "$wheels" <<'EOF'
import re, sys, zipfile
from pathlib import Path

source, out = Path(sys.argv[1]), Path(sys.argv[2])
keep = re.compile(r"libbitsandbytes_(cpu|cuda13\d)\.so$")
with zipfile.ZipFile(source) as zin, zipfile.ZipFile(out / source.name, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zout:
    dropped = {n for n in zin.namelist() if n.endswith(".so") and not keep.search(n)}
    kept = sorted(n.rsplit("/", 1)[-1] for n in zin.namelist() if keep.search(n))
    for info in zin.infolist():
        if info.filename in dropped:
            continue
        data = zin.read(info.filename)
        if info.filename.endswith(".dist-info/RECORD"):
            data = b"".join(line for line in data.splitlines(True) if line.split(b",")[0].decode() not in dropped)
        zout.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
print(f"bitsandbytes: kept {', '.join(kept)}")
EOF

# Pure-Python packages published as sdists only: built into py3-none-any wheels here.
pip_quiet wheel --quiet --no-deps -w "$tmp/built" \
    gptqmodel==7.6.0 logbar==0.4.15 device-smi==0.5.7 tokenicer==0.0.14 defuser==0.0.28
for wheel in "$tmp"/built/*.whl; do
    case $wheel in
        *-py3-none-any.whl) mv "$wheel" "$wheels/" ;;
        *) echo "prepare-wheels: $(basename "$wheel") is not pure Python; it cannot be built here for the GPU" >&2; exit 1 ;;
    esac
done

# pypcre: the sdist (built on the GPU machine) and the pcre2 header of the GPU's library version.
pip_quiet download --quiet --no-deps --no-build-isolation -d "$src" pypcre==0.6.4
ls "$src"/pypcre-0.6.4.tar.gz >/dev/null
(cd "$tmp" && apt-get download libpcre2-dev >/dev/null 2>&1) ||
    { echo "prepare-wheels: apt-get download libpcre2-dev failed (this needs Debian 12, whose pcre2 is 10.42)" >&2; exit 1; }
dpkg-deb --fsys-tarfile "$tmp"/libpcre2-dev_*.deb | tar -xO ./usr/include/pcre2.h >"$src/pcre2.h"
grep -q "define PCRE2_MINOR *42" "$src/pcre2.h" ||
    { echo "prepare-wheels: pcre2.h is not 10.42, the GPU machine's libpcre2-8.so.0" >&2; exit 1; }

# What travels: the repo (tracked and untracked, not ignored) plus .gpu; the device takes 64 MiB a call.
ls -l "$wheels" "$src" | awk 'NF > 4 {printf "%8.2f MB  %s\n", $5 / 1e6, $NF}'
bytes() { du -scb "$@" | tail -1 | cut -f1; }
repo=$(git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb | tail -1 | cut -f1)
awk -v w="$(bytes "$wheels" "$src")" -v g="$(bytes .gpu)" -v r="$repo" 'BEGIN {
    printf "wheels + sources %.1f MB; all of .gpu (with flash-attn, if packed) %.1f MB; repo %.1f MB: %.1f MB travel\n",
        w / 1e6, g / 1e6, r / 1e6, (g + r) / 1e6
    if (g + r > 45e6) { print "prepare-wheels: more than 45 MB would travel (the limit is 64 MiB a call)" > "/dev/stderr"; exit 1 }
}'
echo "next: carry .gpu, and on the GPU machine run scripts/gpu/install-wheels.sh"
