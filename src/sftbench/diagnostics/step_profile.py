"""Where one case's micro-step time and peak memory go, on the GPU: a diagnostic, not a benchmark.

Builds the row's case in this process as the worker does, runs the warm-up, then reports:
- the launch floor: microseconds per tiny kernel launch from Python on this host;
- micro-step time with and without the NVML sampler thread (MemoryTracker's 10 ms poll), in
  alternating blocks so that the host's drift hits both alike;
- torch.profiler over a few micro-steps: host time in torch ops against GPU kernel time, the
  synchronizing calls, the top ops; then cProfile over the same: the Python functions that cost;
- the Python lines that synchronize with the GPU (torch.cuda.set_sync_debug_mode);
- with memory=True: the tensors alive at the peak of the epoch's longest micro-step, grouped by the
  line of sftbench / transformers / peft code that allocated them;
- with clock=N: GPU kernel time and the mean SM clock of the longest and the middle micro-step, traced
  N times each in turn: whether a step's kernel time follows the clock as the GPU warms (long steps run
  below the top clock by amounts that differ between runs);
- with tracing=N: what tracing costs a micro-step and whether it moves the kernels' time: the longest and the
  middle micro-step run N times each untraced, traced for kernel activity alone, with their torch operators
  counted too, and with their CUDA API calls counted as well, in turn: wall time of each, kernel time of the
  traced ones.

`python -m sftbench profile ROW [--memory] [--no-timing] [--clock N] [--tracing N] --out DIR` runs it.
"""

from __future__ import annotations

import cProfile
import gc
import io
import json
import pstats
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from statistics import median

import torch

from sftbench import memory
from sftbench.case import build_case_model, case_trainer, prepare_for_training
from sftbench.catalog import Row
from sftbench.spec import RunOptions
from sftbench.trackers import (
    KernelTimer,
    MemoryTracker,
    StepTimer,
    clock_limit_names,
    host_probe_s,
    kernel_clock_unavailable,
    synchronize,
)
from sftbench.trainer import Trainer, by_size, representatives

MIB = 2**20
SYNC_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpyAsync")


def profile_row(row: Row, out: Path, *, steps: int = 20, blocks: int = 3, memory: bool = False,
                timing: bool = True, clock: int = 0, tracing: int = 0) -> dict:
    """Profile `row`'s case in this process; write <out>/<key>.json (and .profile.txt) and return the report.

    steps: micro-steps per timed block; blocks: timed blocks per NVML sampler setting; clock: traced
    repeats of the longest and the middle micro-step; tracing: rounds of each way of tracing them.
    """
    out.mkdir(parents=True, exist_ok=True)
    spec = row.spec
    report: dict = {"row": row.node_id, "key": spec.key}
    device = torch.device(spec.device)

    model, _ = build_case_model(spec, spec.attention, device)
    trainer = case_trainer(spec, prepare_for_training(model, spec), device)
    ordered = by_size(trainer.batches)
    trainer.warm_up(ordered[-1], ordered[0])
    for batch in representatives(ordered, RunOptions().settle_steps):
        trainer.micro_step(batch)
    gc.collect()
    gc.freeze()
    middle = ordered[len(ordered) // 2]
    report["middle_batch_tokens"] = middle.tokens

    if timing:
        report["launch_floor_us"] = launch_floor_us(device)
        report["nvml_ab"] = nvml_ab(trainer, middle, device, steps, blocks)
        report["profile"] = profile(trainer, middle, out / f"{spec.key}.profile.txt")
        if device.type == "cuda":
            report["sync_lines"] = sync_lines(trainer, middle)
    if memory and device.type == "cuda":
        report["memory_at_peak"] = memory_at_peak(trainer, ordered[0], device)
    if clock:
        unavailable = kernel_clock_unavailable(device)
        report["clock"] = ({"skipped": unavailable} if unavailable else
                           kernel_time_and_clock(trainer, [ordered[0], middle], clock))
    if tracing:
        unavailable = kernel_clock_unavailable(device)
        report["tracing"] = ({"skipped": unavailable} if unavailable else
                             tracing_cost(trainer, [ordered[0], middle], tracing))
    (out / f"{spec.key}.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return report


def launch_floor_us(device: torch.device, launches: int = 20000) -> float:
    """Host microseconds per launch of a one-element add, after a warm-up burst."""
    scratch = torch.zeros(1, device=device)
    host_probe_s(scratch, 100)
    return host_probe_s(scratch, launches) / launches * 1e6


def nvml_ab(trainer: Trainer, batch, device: torch.device, steps: int, blocks: int) -> dict:
    """Median micro-step with the sampler thread off and on, in alternating blocks."""
    times: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(blocks):
        for mode in ("off", "on"):
            tracker = MemoryTracker(device)
            if mode == "on":
                tracker.start()
            timer = StepTimer(device)
            for _ in range(steps):
                with timer.step(batch.tokens):
                    trainer.micro_step(batch)
            tracker.stop()
            times[mode].append(median(timer.durations))
    return {mode: [round(t, 4) for t in values] for mode, values in times.items()}


def profile(trainer: Trainer, batch, text_path: Path, steps: int = 3) -> dict:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    synchronize(trainer.device)
    started = time.perf_counter()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if trainer.device.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        for _ in range(steps):
            trainer.micro_step(batch)
        synchronize(trainer.device)
    wall = time.perf_counter() - started
    averages = prof.key_averages()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    gpu_us = sum(getattr(e, "device_time", 0) or getattr(e, "cuda_time", 0) for e in kernels)
    python = cProfile.Profile()
    python.enable()
    for _ in range(steps):
        trainer.micro_step(batch)
    synchronize(trainer.device)
    python.disable()
    stats = io.StringIO()
    pstats.Stats(python, stream=stats).sort_stats("tottime").print_stats(30)
    pstats.Stats(python, stream=stats).sort_stats("cumulative").print_stats(40)
    text_path.write_text(averages.table(sort_by="self_cpu_time_total", row_limit=30) + "\n" + stats.getvalue(),
                         encoding="utf-8")
    return {
        "micro_steps": steps,
        "wall_s_profiled": round(wall, 3),
        "gpu_kernel_s": round(gpu_us / 1e6, 3),
        "kernels": len(kernels),
        "cpu_ops": sum(e.count for e in averages if e.device_type == torch.autograd.DeviceType.CPU),
        "sync_calls": {e.key: e.count for e in averages if e.key in SYNC_CALLS},
    }


def kernel_time_and_clock(trainer: Trainer, batches, repeats: int) -> dict[str, list]:
    """Each batch traced `repeats` times, in turn: per traced step its tokens, kernel seconds, kernel count,
    mean SM clock (MHz) and what held the clock down (trackers.CLOCK_LIMITS names), in the order run."""
    timer = KernelTimer(trainer.device)
    timer.start()
    for _ in range(repeats):
        for batch in batches:
            with timer.step(batch.tokens):
                trainer.micro_step(batch)
        timer.collect()
    steps = timer.stop().steps
    limits = [None if bits is None else clock_limit_names(bits) for bits in timer.step_limits]
    return {"tokens": [s.tokens for s in steps], "kernel_s": [s.seconds for s in steps],
            "kernels": [sum(count for _, count, _ in s.kernels) for s in steps], "sm_mhz": [s.sm_mhz for s in steps],
            "clock_limits": limits}


# Ways of tracing a micro-step, by name: (count its operators, count its API calls); None: untraced.
TRACING = {"untraced": None, "kernel activity": (False, False), "operators counted": (True, False),
           "operators and API calls counted": (True, True)}


def tracing_cost(trainer: Trainer, batches, rounds: int) -> dict[str, dict[str, dict[str, list[float]]]]:
    """Per batch (by its tokens) and way of tracing (TRACING), in turn `rounds` times: each micro-step's wall
    seconds (synchronized before and after), and the kernel seconds of the traced ones, in the order run."""
    timer = KernelTimer(trainer.device)
    timer.start()
    runs = []  # (tokens, way, wall seconds) in the order run
    for _ in range(rounds):
        for batch in batches:
            for way, counts in TRACING.items():
                traced = nullcontext() if counts is None else timer.step(batch.tokens, *counts)
                synchronize(trainer.device)
                started = time.perf_counter()
                with traced:
                    trainer.micro_step(batch)
                synchronize(trainer.device)
                runs.append((batch.tokens, way, time.perf_counter() - started))
        timer.collect()
    kernel_s = iter(step.seconds for step in timer.stop().steps)
    report: dict[str, dict[str, dict[str, list[float]]]] = {}
    for tokens, way, wall_s in runs:
        measured = report.setdefault(str(tokens), {}).setdefault(way, {"wall_s": []})
        measured["wall_s"].append(wall_s)
        if TRACING[way] is not None:
            measured.setdefault("kernel_s", []).append(next(kernel_s))
    return report


def sync_lines(trainer: Trainer, batch) -> dict[str, int]:
    """file:line of the Python code whose torch calls waited for the GPU, during one micro-step."""
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.micro_step(batch)
            trainer.optimizer_step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    lines: dict[str, int] = {}
    for w in caught:
        where = f"{w.filename}:{w.lineno}"
        lines[where] = lines.get(where, 0) + 1
    return lines


def memory_at_peak(trainer: Trainer, batch, device: torch.device) -> dict:
    """Replay the allocator's record of one micro-step; group the bytes allocated in it and alive at its peak."""
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    blocks, peak, _ = memory.live_at_peak(*memory.recorded(device, lambda: trainer.micro_step(batch)))
    groups = memory.by_site([block for block in blocks if block.where != memory.HELD_BEFORE])
    return {
        "batch_tokens": batch.tokens,
        "allocated_before_mib": round(before / MIB),
        "trace_peak_above_before_mib": round(peak / MIB),
        "max_allocated_mib": round(torch.cuda.max_memory_allocated(device) / MIB),
        "max_reserved_mib": round(torch.cuda.max_memory_reserved(device) / MIB),
        "groups_mib": [[where, round(size / MIB), count] for where, size, count in groups[:20]],
    }
