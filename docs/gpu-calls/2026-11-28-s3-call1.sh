# Session 3, call 1 (nvidia-h200-x4): quick-full-quick at 8192, 2048 and 512 on GPUs 0-2, one per GPU,
# each pinned to its own 16 cores; diagnostics (scripts/step_profile.py) on GPU 3.
set -u
T0=$(date +%s)
source scripts/gpu/setup.sh > setup.log 2>&1 || { cat setup.log; exit 1; }
echo "setup $(( $(date +%s) - T0 ))s"; nproc; grep -m1 "model name" /proc/cpuinfo
left() { echo $((580 - ($(date +%s) - T0))); }
mkdir -p r
qfq() {  # gpu cores length
  CUDA_VISIBLE_DEVICES=$1 timeout $(left) taskset -c $2 python3 scripts/projection_check.py \
    "test_lora_max_length[qwen-7b-chat-$3]" --quick-runs 2 --out r/p$3 > r/p$3.log 2>&1
}
qfq 0 0-15 8192 & A=$!
qfq 1 16-31 2048 & B=$!
qfq 2 32-47 512 & C=$!
(export CUDA_VISIBLE_DEVICES=3
 P="timeout $(left) taskset -c 48-63 python3 scripts/step_profile.py"
 $P "test_lora_max_length[qwen-7b-chat-512]" --out r/diag
 $P "test_lora_max_length[qwen-1_8b-chat-512]" --out r/diag
 $P "test_lora_max_length[qwen-7b-chat-2048]" --memory --out r/diag
 $P "test_lora_max_length[qwen-7b-chat-8192]" --memory --no-timing --out r/diag
 $P "test_lora_max_length[qwen-1_8b-chat-8192]" --memory --no-timing --out r/diag
 $P "test_lora_max_length[qwen-14b-chat-8192]" --memory --no-timing --out r/diag
 $P "test_flash_attn_gradient_checkpointing[qwen-7b-chat-noflash-nogc]" --memory --no-timing --out r/diag
) > r/diag.log 2>&1 & D=$!
(while sleep 60; do echo "t=$(( $(date +%s) - T0 ))s $(nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader | paste -sd' ')"; done) & M=$!
wait $D; echo "diag done t=$(( $(date +%s) - T0 ))s"; grep -v "^\[sftbench\|USDT" r/diag.log | grep -E "launch_floor|\"off\"|\"on\"|wall_s|gpu_kernel|Error|error" | head -30
wait $A $B $C; kill $M
for l in 512 2048 8192; do tail -n 7 r/p$l.log; done
tar czf $OUT/s3c1.tgz r setup.log
echo total $(( $(date +%s) - T0 ))s
