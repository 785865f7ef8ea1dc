# Call 2: the whole matrix but qwen-72b-chat, one shard per GPU (4 H200), baselines rewritten.
set -u
T0=$(date +%s)
source scripts/gpu/setup.sh > setup.log 2>&1 || { cat setup.log; exit 1; }
tail -2 setup.log
(while sleep 60; do echo "t=$(( $(date +%s) - T0 ))s $(nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader | paste -sd' ')"; done) & M=$!
timeout $((575 - ($(date +%s) - T0))) scripts/bench-gpus.sh -k "not 72b" --sftbench-update-baselines 2>&1 | grep -v "^\[gpu .\] \[sftbench" | grep -E "PASS|FAIL|SKIP|ERROR|sftbench|bench-gpus|passed|failed|Error|error" | cut -c1-220
kill $M
tar czf $OUT/c2.tgz baselines results logs setup.log
echo total $(( $(date +%s) - T0 ))s
