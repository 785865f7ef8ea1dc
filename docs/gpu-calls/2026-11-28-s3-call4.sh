# Session 3, call 4 (nvidia-h200, the last 5 minutes of device time): does MemoryTracker's NVML sampler
# thread (10 ms) slow host-bound steps? Six alternating blocks of 20 micro-steps, sampler off and on.
set -u
T0=$(date +%s)
source scripts/gpu/setup.sh > setup.log 2>&1 || { cat setup.log; exit 1; }
mkdir -p r
for row in "test_lora_max_length[qwen-7b-chat-512]" "test_lora_max_length[qwen-1_8b-chat-512]"; do
  timeout $((200 - ($(date +%s) - T0))) python3 scripts/step_profile.py "$row" --blocks 6 --out r/nvml > /dev/null 2> r/nvml.err
  python3 -c "import json,glob; [print(d['key'][:30], d['launch_floor_us'], d['nvml_ab']) for d in map(lambda f: json.load(open(f)), glob.glob('r/nvml/*.json'))]"
done
tar czf $OUT/s3c4.tgz r
echo total $(( $(date +%s) - T0 ))s
