# Source this on the GPU machine, from the repo root, at the start of a call:
#   source scripts/gpu/setup.sh
# Installs what .gpu/ carries (scripts/gpu/install-wheels.sh), installs sftbench itself (offline,
# editable: its pytest plugin is an entry point) and sets the variables the runs need.
scripts/gpu/install-wheels.sh || return 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
# The copy of the tree there has no .git: write `git rev-parse --short HEAD > .gpu/commit` before the call.
[ -f .gpu/commit ] && export SFTBENCH_COMMIT=$(cat .gpu/commit)
python3 -m pip install -q --no-deps --no-build-isolation -e . || return 1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
