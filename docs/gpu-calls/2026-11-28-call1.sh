# Call 1: projection checks (512/2048/8192) on GPUs 0-2, quick 8192 repeats + quantized 7b/14b rows on GPU 3.
set -u
T0=$(date +%s)
source scripts/gpu/setup.sh > setup.log 2>&1 || { cat setup.log; exit 1; }
tail -4 setup.log; nvidia-smi -L; nproc; df -h /tmp | tail -1
mkdir -p r
R='test_lora_max_length[qwen-7b-chat-'
left() { echo $((560 - ($(date +%s) - T0))); }
on() { g=$1; shift; CUDA_VISIBLE_DEVICES=$g timeout $(left) "$@"; }
(on 2 python3 scripts/projection_check.py "${R}8192]" --quick-runs 0 --out r/p8192 > r/gpu2.log 2>&1) & P=($!)
(on 0 python3 scripts/projection_check.py "${R}512]" --quick-runs 2 --settle 16 --settle 48 --out r/p512 > r/gpu0.log 2>&1) & P+=($!)
(on 1 python3 scripts/projection_check.py "${R}2048]" --quick-runs 2 --settle 16 --settle 48 --out r/p2048 > r/gpu1.log 2>&1) & P+=($!)
(for i in a b c; do on 3 python3 -m sftbench run "${R}8192]" --out r/q8192$i >> r/gpu3.log 2>&1; done;
 on 3 python3 -m pytest tests/benchmarks/test_quantization.py -p no:cacheprovider -k "(gptq or bnb) and not 72b" --sftbench-results r/quant -v >> r/gpu3.log 2>&1) & P+=($!)
while sleep 60; do echo "t=$(( $(date +%s) - T0 ))s"; tail -qn1 r/gpu?.log | cut -c1-150; nvidia-smi --query-gpu=index,memory.used,utilization.gpu --format=csv,noheader | paste -sd' '; a=0; for p in "${P[@]}"; do kill -0 $p 2>/dev/null && a=1; done; [ $a = 0 ] && break; done
wait
tail -n 12 r/gpu*.log
tar czf $OUT/r.tgz r setup.log
echo total $(( $(date +%s) - T0 ))s
