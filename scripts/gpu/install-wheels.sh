#!/usr/bin/env bash
# Install what scripts/gpu/prepare-wheels.sh put in .gpu/, on the GPU machine, from the repo root (seconds):
# the wheels, pypcre compiled against the machine's libpcre2-8.so.0 (gcc and Python.h are there; pcre2.h
# comes from .gpu/src), and flash-attn's packed site tree if .gpu/flash_attn-site.tar.xz is there.
# Fails loudly: any step that does not work stops the script with a non-zero status.
# Usage: scripts/gpu/install-wheels.sh [--target DIR (default /tmp/site)] [--python PY (default python3)] [--check]
#   --check also imports every installed package (slower: it imports torch).
set -euo pipefail
target=/tmp/site
python=python3
check=0
while [ $# -gt 0 ]; do
    case $1 in
        --target) target=$2; shift 2 ;;
        --python) python=$2; shift 2 ;;
        --check) check=1; shift ;;
        *) echo "usage: $0 [--target DIR] [--python PY] [--check]" >&2; exit 2 ;;
    esac
done
cd "$(dirname "$0")/../.."
fail() { echo "install-wheels: $*" >&2; exit 1; }

shopt -s nullglob
wheels=(.gpu/wheels/*.whl)
[ ${#wheels[@]} -gt 0 ] || fail "no wheels in .gpu/wheels: run scripts/gpu/prepare-wheels.sh on the CPU machine and carry .gpu"
"$python" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$target" "${wheels[@]}"
echo "installed ${#wheels[@]} wheels into $target"

# pypcre, compiled directly (no setuptools run: its setup may try to clone pcre2 from the network).
sdists=(.gpu/src/pypcre-*.tar.gz)
[ ${#sdists[@]} -eq 1 ] && [ -f .gpu/src/pcre2.h ] || fail "need one .gpu/src/pypcre-*.tar.gz and .gpu/src/pcre2.h"
library=$(ldconfig -p | awk '$1 == "libpcre2-8.so.0" && /x86-64/ {print $NF; exit}')
[ -n "$library" ] || fail "libpcre2-8.so.0 (x86-64) not found by ldconfig"
include=$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
suffix=$("$python" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
[ -f "$include/Python.h" ] || fail "no Python.h in $include"
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
tar -xzf "${sdists[0]}" -C "$build"
package=$(basename "${sdists[0]}" .tar.gz)
mkdir "$build/include"
cp .gpu/src/pcre2.h "$build/include/"  # first on the path: the sdist bundles a newer pcre2.h (10.46)
pids=()
for source in "$build/$package"/pcre_ext/*.c; do
    gcc -c -fPIC -O2 -std=c11 -I"$build/include" -I"$include" "$source" -o "${source%.c}.o" & pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid" || fail "compiling pypcre failed"; done
gcc -shared -o "$target/pcre_ext_c$suffix" "$build/$package"/pcre_ext/*.o "$library" -ldl
rm -rf "$target/pcre" "$target/$package.dist-info"
cp -r "$build/$package/pcre" "$target/"
mkdir "$target/$package.dist-info"
printf 'Metadata-Version: 2.1\nName: PyPcre\nVersion: %s\n' "${package#pypcre-}" >"$target/$package.dist-info/METADATA"
PYTHONPATH="$target" "$python" -c 'import pcre; assert pcre.compile(r"\d+").findall("a1b22") == ["1", "22"]' ||
    fail "pcre does not import"
echo "built ${package} against $library"

if [ -f .gpu/flash_attn-site.tar.xz ]; then
    if [ "$("$python" -c 'import sys; print(sys.version_info[:2] == (3, 12))')" = True ]; then
        tar -xJf .gpu/flash_attn-site.tar.xz -C "$target"
        echo "unpacked flash-attn into $target"
    else
        echo "flash-attn not unpacked: .gpu/flash_attn-site.tar.xz holds a build for Python 3.12"
    fi
fi

if [ "$check" = 1 ]; then
    PYTHONPATH="$target" "$python" - <<'EOF' || fail "an installed package does not import"
import contextlib, importlib, io, os
from importlib import metadata

for module, distribution in [("bitsandbytes", "bitsandbytes"), ("optimum.gptq", "optimum"), ("gptqmodel", "gptqmodel"),
                             ("flash_attn", "flash-attn")]:
    try:
        metadata.version(distribution)
    except metadata.PackageNotFoundError:
        print(f"{distribution}: not installed")
        continue
    with contextlib.redirect_stdout(io.StringIO()):
        importlib.import_module(module)
    print(f"{distribution} {metadata.version(distribution)}: imports")
EOF
fi

echo "to use them: export PYTHONPATH=$target\${PYTHONPATH:+:\$PYTHONPATH}"
echo "and pin the allocator: export PYTORCH_ALLOC_CONF=\${PYTORCH_ALLOC_CONF:-expandable_segments:False}"
echo "  (importing gptqmodel, which peft does whenever it builds LoRA, sets expandable_segments:True when it is unset)"
