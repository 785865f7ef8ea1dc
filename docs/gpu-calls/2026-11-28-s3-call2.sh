# Session 3, call 2 (nvidia-h200-x4): the whole matrix with the mean projection, 4 settle steps and
# 16 timed steps where steps take a second or more, baselines rewritten; one part per GPU, pinned to its
# 16 cores. After its part, each GPU runs memory diagnostics of the rows the report flags
# (scripts/step_profile.py --memory; bash locals such as $cores reach the functions a function calls); GPU 1 first repeats test_full_max_length[qwen-7b-chat-4096]
# against the baseline its part just wrote, clean and with CUDA_LAUNCH_BLOCKING=1.
set -u
T0=$(date +%s)
source scripts/gpu/setup.sh > setup.log 2>&1 || { cat setup.log; exit 1; }
echo "setup $(( $(date +%s) - T0 ))s"
left() { echo $((585 - ($(date +%s) - T0))); }
mkdir -p r/diag logs
diag() { timeout $(left) taskset -c $cores python3 scripts/step_profile.py "$1" --memory --no-timing --out r/diag > "r/diag-$2.log" 2>&1; }
part() {  # index(1-4) then follow-up commands
  local i=$1; shift
  export CUDA_VISIBLE_DEVICES=$((i - 1))
  local cores=$(( (i - 1) * 16 ))-$(( (i - 1) * 16 + 15 ))
  local t=$(date +%s)
  timeout $(left) taskset -c $cores python3 -m pytest tests/benchmarks -p no:cacheprovider --sftbench-shard $i/4 \
    --sftbench-update-baselines --benchmark-json logs/benchmark-part$i.json > logs/part$i.log 2>&1
  echo "part $i/4 exited $? after $(( $(date +%s) - t ))s"
  "$@"
}
follow1() { diag "test_lora_max_length[qwen-7b-chat-8192]" 7b-8192; diag "test_lora_max_length[qwen-7b-chat-4096]" 7b-4096; }
follow2() {
  local ROW='tests/benchmarks/test_full_max_length.py::test_full_max_length[qwen-7b-chat-4096]'
  timeout $(left) taskset -c $cores python3 -m pytest "$ROW" -p no:cacheprovider --sftbench-results r/demo-results > r/demo-clean.log 2>&1
  CUDA_LAUNCH_BLOCKING=1 timeout $(left) taskset -c $cores python3 -m pytest "$ROW" -p no:cacheprovider --sftbench-results r/demo-results > r/demo-regressed.log 2>&1
  diag "test_lora_max_length[qwen-1_8b-chat-8192]" 1_8b-8192; diag "test_lora_max_length[qwen-1_8b-chat-4096]" 1_8b-4096
}
follow3() { diag "test_lora_max_length[qwen-14b-chat-8192]" 14b-8192; diag "test_lora_max_length[qwen-14b-chat-4096]" 14b-4096
            diag "test_flash_attn_gradient_checkpointing[qwen-7b-chat-noflash-nogc]" noflash-nogc; }
follow4() { diag "test_full_max_length[qwen-1_8b-chat-8192]" full-1_8b-8192; }
(while sleep 60; do echo "t=$(( $(date +%s) - T0 ))s $(nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader | paste -sd' ')"; done) & M=$!
part 1 follow1 & P1=$!; part 2 follow2 & P2=$!; part 3 follow3 & P3=$!; part 4 follow4 & P4=$!
wait $P1 $P2 $P3 $P4
kill $M
grep -h -E "passed|failed|error" logs/part*.log | tail -n 8
grep -h -E "regression|differ|passed|failed|minutes_per|MiB" r/demo-clean.log r/demo-regressed.log | grep -v "^\[sftbench" | cut -c1-300 | tail -n 14
ls r/diag
tar czf $OUT/s3c2.tgz baselines results logs r setup.log
echo total $(( $(date +%s) - T0 ))s
