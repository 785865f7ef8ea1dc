# Session 3, call 3 (nvidia-h200-x2, nothing else running): quick-quick-full-quick-quick for
# qwen-7b-chat LoRA at 512 (GPU 0) and 2048 (GPU 1), each pinned to its own 16 cores, with the
# quick mode of f851d37 (mean projection, 4 settle steps).
set -u
T0=$(date +%s)
source scripts/gpu/setup.sh > setup.log 2>&1 || { cat setup.log; exit 1; }
echo "setup $(( $(date +%s) - T0 ))s"; nproc
mkdir -p r
qfq() {  # gpu cores length
  CUDA_VISIBLE_DEVICES=$1 timeout $((585 - ($(date +%s) - T0))) taskset -c $2 python3 scripts/projection_check.py \
    "test_lora_max_length[qwen-7b-chat-$3]" --quick-runs 4 --out r/p$3 > r/p$3.log 2>&1
}
qfq 0 0-15 512 & A=$!
qfq 1 16-31 2048 & B=$!
wait $A $B
for l in 512 2048; do tail -n 6 r/p$l.log; done
tar czf $OUT/s3c3.tgz r setup.log
echo total $(( $(date +%s) - T0 ))s
