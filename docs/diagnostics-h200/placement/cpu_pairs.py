"""CPU placement probe: how much a Python loop on cpu 0 slows while another loop runs on cpu k, for every k.
usage: cpu_pairs.py OUT.json (min of five timed loops per placement, each in a process pinned to one cpu)"""
import os, sys, time, multiprocessing as mp, json

def work(n=300_000):
    d = {i: i for i in range(2000)}
    s = 0
    for i in range(n):
        s += d[i % 2000]
    return s

def timed(cpu, reps, q):
    os.sched_setaffinity(0, {cpu})
    work(50_000)
    ts = []
    for _ in range(reps):
        t = time.perf_counter(); work(); ts.append(time.perf_counter() - t)
    q.put((cpu, min(ts)))

def spin(cpu, stop):
    os.sched_setaffinity(0, {cpu})
    while not stop.is_set():
        work(20_000)

def run(base, others, reps=5):
    stop = mp.Event(); q = mp.Queue()
    ps = [mp.Process(target=spin, args=(c, stop)) for c in others]
    for p in ps: p.start()
    time.sleep(0.05)
    t = mp.Process(target=timed, args=(base, reps, q)); t.start(); t.join()
    stop.set()
    for p in ps: p.join()
    return q.get()[1]

if __name__ == "__main__":
    n = os.cpu_count()
    out = {}
    alone = [run(0, []) for _ in range(3)]
    out["alone"] = alone
    out["with_k"] = {k: run(0, [k]) for k in range(1, n)}
    out["alone_again"] = [run(0, []) for _ in range(3)]
    half = n // 2
    out["with_half_0"] = run(0, list(range(1, half)))
    out["with_other_half"] = run(0, list(range(half, n)))
    out["with_all"] = run(0, list(range(1, n)))
    a = min(alone + out["alone_again"])
    print("alone", [round(x*1e3,1) for x in alone], "again", [round(x*1e3,1) for x in out["alone_again"]], "ms")
    print("slowdown of cpu 0 with one loop on cpu k (%):", {k: round(100*(v/a-1),1) for k, v in out["with_k"].items()})
    for key in ("with_half_0", "with_other_half", "with_all"):
        print(key, round(100*(out[key]/a-1),1), "%")
    json.dump(out, open(sys.argv[1], "w"), indent=1)
