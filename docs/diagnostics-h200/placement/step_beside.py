"""Host-bound steps beside a second case: qwen-7b-chat LoRA 512 micro-steps of the epoch's middle batch, in
blocks of three, on the visible GPU. Two processes (ROLE main and other, one per GPU) follow one schedule of
PHASE_S-second phases from START_EPOCH: the layout (each role's CPU set for its main thread) changes every
two phases, and the other process trains only in odd phases, so the main process times each layout with
the other GPU's case idle and busy, three times over.
usage: step_beside.py ROLE START_EPOCH PHASE_S LAYOUTS_JSON OUT"""
import json, os, sys, time
import torch
from sftbench import catalog
from sftbench.case import build_case_model, case_trainer, prepare_for_training

role, start, phase_s, layouts, out = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), json.loads(sys.argv[4]), sys.argv[5]
row = catalog.rows_by_id(["test_lora_max_length[qwen-7b-chat-512]"])[0]
spec = row.spec
dev = torch.device("cuda")
model, _ = build_case_model(spec, spec.attention, dev)
tr = case_trainer(spec, prepare_for_training(model, spec), dev)
ordered = sorted(tr.batches, key=lambda b: -b.tokens)
tr.warm_up(ordered[-1], ordered[0])
middle = ordered[len(ordered) // 2]
for _ in range(5):
    tr.micro_step(middle)
torch.cuda.synchronize()
names = list(layouts)
# schedule: phase p -> layout names[(p // 2) % len], other busy on odd p; the whole cycle repeats
log = []
print(role, "ready", round(time.time() - start, 1), "s after start", flush=True)
while time.time() < start:
    time.sleep(0.05)
cycles = 3
total = cycles * 2 * len(names)
while True:
    now = time.time() - start
    p = int(now // phase_s)
    if p >= total:
        break
    layout = names[(p // 2) % len(names)]
    busy = p % 2 == 1
    cpus = layouts[layout][0 if role == "main" else 1]
    os.sched_setaffinity(0, cpus)
    if role == "other" and not busy:
        time.sleep(0.05)
        continue
    t, c = time.perf_counter(), time.thread_time()
    for _ in range(3):
        tr.micro_step(middle)
    torch.cuda.synchronize()
    log.append([round(now, 3), p, layout, busy, time.perf_counter() - t, time.thread_time() - c])
json.dump({"role": role, "phase_s": phase_s, "layouts": layouts, "middle_tokens": middle.tokens, "log": log}, open(out, "w"))
print(role, "done", len(log), "blocks", flush=True)
