# Call 3: qwen-72b-chat rows on GPUs 0-2; regression demo and a quick-full-quick check at 2048 on GPU 3.
set -u
T0=$(date +%s)
if [ -d /tmp/site/flash_attn ] && python3 -c "import sftbench" 2>/dev/null; then export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 SFTBENCH_COMMIT=$(cat .gpu/commit); echo "reusing /tmp/site"
else source scripts/gpu/setup.sh > setup.log 2>&1 || { cat setup.log; exit 1; }; fi
left() { echo $((570 - ($(date +%s) - T0))); }
mkdir -p r
(GPUS=0,1,2 LOGS=logs72 timeout $(left) taskset -c 0-47 scripts/bench-gpus.sh -k 72b --sftbench-update-baselines > r/72b.log 2>&1) & A=$!
ROW='tests/benchmarks/test_lora_max_length.py::test_lora_max_length[qwen-7b-chat-8192]'
export CUDA_VISIBLE_DEVICES=3
D="-p no:cacheprovider --sftbench-baselines r/demo-baselines --sftbench-results r/demo-results"
(timeout $(left) taskset -c 48-63 python3 -m pytest "$ROW" $D --sftbench-update-baselines > r/demo-update.log 2>&1
 timeout $(left) taskset -c 48-63 python3 -m pytest "$ROW" $D > r/demo-clean.log 2>&1
 CUDA_LAUNCH_BLOCKING=1 timeout $(left) taskset -c 48-63 python3 -m pytest "$ROW" $D > r/demo-regressed.log 2>&1
 timeout $(left) taskset -c 48-63 python3 scripts/projection_check.py 'test_lora_max_length[qwen-7b-chat-2048]' --quick-runs 2 --out r/p2048 > r/p2048.log 2>&1) & B=$!
(while sleep 60; do echo "t=$(( $(date +%s) - T0 ))s $(nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader | paste -sd' ')"; done) & M=$!
wait $A $B; kill $M
grep -vh "^\[gpu .\] \[sftbench\|^\[sftbench" r/72b.log | grep -E "PASS|FAIL|SKIP|ERROR|sftbench|bench-gpus|passed|failed" | cut -c1-220
tail -n 25 r/demo-clean.log r/demo-regressed.log | cut -c1-400; tail -n 8 r/p2048.log
tar czf $OUT/c3.tgz baselines results logs72 r
echo total $(( $(date +%s) - T0 ))s
