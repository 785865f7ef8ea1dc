"""What tracing adds to a step, and what reading CUPTI's kernel records costs, on the GPU host (docs/measurements.md
section 16). The workload is host-bound on purpose: 3000 times an in-place add on one element and a 512x512 matmul.

    python scripts/cupti_cost.py callbacks > cupticost.json   # through cupti-python's own buffer callback
    python scripts/cupti_cost.py reader > reader.json         # through sftbench's KernelTimer (sftbench.cupti_records)

Run each in its own process: CUPTI takes one pair of buffer callbacks per process.
"""

from __future__ import annotations

import json
import sys
import time

import torch

from sftbench.trackers import ApiCounter, KernelTimer, OperatorCounter

DEVICE = torch.device("cuda")
SCALAR = torch.zeros(1, device=DEVICE)
MATRIX = torch.randn(512, 512, device=DEVICE)


def work() -> None:
    for _ in range(3000):
        SCALAR.add_(1)
        torch.mm(MATRIX, MATRIX)


def wall_s(step, repeats: int = 5) -> list[float]:
    durations = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        started = time.perf_counter()
        step()
        torch.cuda.synchronize()
        durations.append(time.perf_counter() - started)
    return durations


def through_callbacks() -> dict:
    """Wall time of the workload untraced, with kernel activity, with API callbacks, with operator counting too; and
    the flush of cupti-python's buffer callback with nothing, the times, the names read per record."""
    from cupti import cupti

    kind = cupti.ActivityKind.CONCURRENT_KERNEL
    state = {"read": None, "records": 0, "in_callback_s": 0.0}

    def completed(activities) -> None:
        started = time.perf_counter()
        state["records"] += len(activities)
        if state["read"]:
            state["read"](activities)
        state["in_callback_s"] += time.perf_counter() - started

    def traced(api=None, operators=False):
        def step():
            cupti.activity_enable(kind)
            if api:
                api.begin()
            if operators:
                with OperatorCounter():
                    work()
            else:
                work()
            torch.cuda.synchronize()
            if api:
                api.end()
            cupti.activity_disable(kind)
        return step

    def flush(read) -> dict:
        state.update(read=read, records=0, in_callback_s=0.0)
        started = time.perf_counter()
        cupti.activity_flush_all(1)
        return {"records": state["records"], "flush_s": time.perf_counter() - started,
                "in_callback_s": state["in_callback_s"]}

    work()
    out = {"untraced": wall_s(work)}
    cupti.activity_register_callbacks(lambda: (32 * 2**20, 0), completed)
    out["activity_only"] = wall_s(traced())
    out["flush_nothing_read"] = flush(None)
    api = ApiCounter(cupti)
    out["activity_api"] = wall_s(traced(api))
    out["flush_nothing_read_2"] = flush(None)
    out["activity_api_operators"] = wall_s(traced(api, operators=True))
    out["flush_nothing_read_3"] = flush(None)
    api.close()
    wall_s(traced(), repeats=1)
    out["flush_times_read"] = flush(lambda activities: [(a.start, a.end) for a in activities])
    wall_s(traced(), repeats=1)
    out["flush_times_and_names_read"] = flush(lambda activities: [(a.start, a.end, a.name) for a in activities])
    return out


def through_reader() -> dict:
    """The same workload traced 5 times by sftbench's KernelTimer, and what its collect() took."""
    work()
    timer = KernelTimer(DEVICE)
    timer.start()
    for i in range(5):
        with timer.step(i + 1):
            work()
    started = time.perf_counter()
    steps = timer.collect()
    read_s = time.perf_counter() - started
    records = sum(count for step in steps for _, count, _ in step.kernels)
    return {"clock": timer.record.clock, "records": records, "collect_s": read_s,  # the clock names a slow read
            "us_per_record": 1e6 * read_s / max(records, 1), "names": timer.record.names,
            "step_seconds": [step.seconds for step in steps]}


if __name__ == "__main__":
    print(json.dumps({"callbacks": through_callbacks, "reader": through_reader}[sys.argv[1]](), indent=1))
