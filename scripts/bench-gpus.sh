#!/usr/bin/env bash
# Run the benchmarks on several GPUs of one host at once: one pytest process per GPU, pinned to it
# (CUDA_VISIBLE_DEVICES) and to its own share of the CPU cores (taskset), and given one part of the
# selection (--sftbench-shard i/N, balanced by the seed's minutes). Each case still has its GPU to
# itself. The CPU pinning matters: a 7B LoRA step is mostly Python and kernel launches, and unpinned
# on a 4-GPU H200 host the same 512-token step took 0.16-0.27 s depending on what the other parts
# did (synthesizing a GPTQ checkpoint uses every core; docs/measurements.md). The parts' results land in the same
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
cores=$(nproc)
share=$((cores / count))
[ "$share" -ge 1 ] || { echo "bench-gpus: $cores CPU cores cannot be shared among $count GPUs" >&2; exit 2; }
pin=()
command -v taskset >/dev/null || echo "bench-gpus: taskset not found; the parts are not pinned to CPU cores" >&2
mkdir -p "$logs"
pids=()
for i in "${!list[@]}"; do
    part=$((i + 1))
    command -v taskset >/dev/null && pin=(taskset -c "$((i * share))-$((i * share + share - 1))")
    (
        CUDA_VISIBLE_DEVICES=${list[$i]} "${pin[@]}" "$python" -m pytest tests/benchmarks -p no:cacheprovider \
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
