#!/usr/bin/env bash
# Run the benchmarks on several GPUs of one host at once: one pytest process per GPU, pinned to it
# (CUDA_VISIBLE_DEVICES) and given one part of the selection (--sftbench-shard i/N, balanced by the
# seed's minutes). Each case still has its GPU to itself; the parts' results land in the same
# results/<gpu>/ folder (and baselines/<gpu>/ with --sftbench-update-baselines), one file per
# configuration, so `python -m sftbench report results/<gpu>` reads them as one run.
# Output lines are prefixed with the GPU; each part's log and pytest-benchmark JSON go to $LOGS.
# Usage: scripts/bench-gpus.sh [PYTEST ARGS...]
#   GPUS=0,1,2,3 (default: every GPU nvidia-smi lists)  PYTHON=python3  LOGS=logs
# Exit status: 0 when every part passed, else the first failing part's.
set -uo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
logs=${LOGS:-logs}
gpus=${GPUS:-$(nvidia-smi --query-gpu=index --format=csv,noheader | paste -sd,)}
[ -n "$gpus" ] || { echo "bench-gpus: no GPU found (set GPUS=0,1,...)" >&2; exit 2; }
IFS=, read -ra list <<<"$gpus"
count=${#list[@]}
mkdir -p "$logs"
pids=()
for i in "${!list[@]}"; do
    part=$((i + 1))
    (
        CUDA_VISIBLE_DEVICES=${list[$i]} "$python" -m pytest tests/benchmarks -p no:cacheprovider \
            --sftbench-shard "$part/$count" --benchmark-json "$logs/benchmark-part$part.json" "$@" 2>&1 |
            tee "$logs/part$part.log" | sed -u "s/^/[gpu ${list[$i]}] /"
    ) &
    pids+=($!)
done
status=0
for i in "${!pids[@]}"; do
    wait "${pids[$i]}"
    rc=$?
    echo "bench-gpus: part $((i + 1))/$count on GPU ${list[$i]} exited $rc ($logs/part$((i + 1)).log)"
    [ "$status" = 0 ] && status=$rc
done
exit "$status"
