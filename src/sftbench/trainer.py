"""The training loop, as swift ran it, and the two ways of timing an epoch.

swift (Dec 2023) trained with the HF Trainer: autocast in the model's dtype (bf16; fp16 with a grad
scaler for the fp16 GPTQ checkpoints), AdamW (torch), max_grad_norm 0.5, gradient accumulation
ceil(16 / batch_size), a cosine schedule with 5% warm-up, one epoch.

Quick mode times representative batches (the epoch's longest and batches at evenly spaced
quantiles of batch size in tokens) and projects the epoch by interpolating step time over tokens;
full mode trains every batch. Both run the same untimed warm-up first: the shortest batch with an
optimizer step (AdamW's states exist from then on), then the longest batch with gradients present:
the epoch's worst memory state, so the recorded peak (over the whole case, model build included,
as the seed's was) contains the epoch's true peak, and the allocator has grown to it before any
step is timed (a one-off cost in a real epoch, not one step in 32). Then `settle_steps` more
untimed micro-steps at representative sizes; their times size the quick mode: micro-steps of a
second or more (72B, batch size 8) are GPU-bound and steady (residual jitter 2-4% against 12-20% for
the host-bound 0.2-s steps of 7B models on the H200), so half as many are timed.

The projection takes the mean of repeated token counts, not their median: an epoch's time is a
sum, and the occasional slow step is part of it.

GPU kernel time (a KernelTimer, where CUPTI is available) is traced on separate micro-steps after
the timed ones, so the wall-timed steps never pay for tracing: one micro-step of each batch shape
among `kernel_steps` representatives and one optimizer step, projected over the epoch like the wall
time. A full epoch traces every step (its wall time then includes CUPTI's tracing) and reads the
records every FLUSH_EVERY micro-steps, outside the timed steps.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from statistics import mean, median

import numpy as np
import torch

from sftbench import kernels
from sftbench.data import Batch, collate
from sftbench.injection import KERNEL_TARGETS, Injection
from sftbench.spec import RunOptions
from sftbench.trackers import KernelSteps, KernelTimer, StepTimer

MAX_GRAD_NORM = 0.5
WARMUP_RATIO = 0.05
LEARNING_RATE = {"lora": 1e-4, "full": 2e-5}
OPTIMIZER_TIMINGS = 3
LONG_STEP_S = 1.0  # micro-steps this long time half of RunOptions.representative_steps
FLUSH_EVERY = 50  # micro-steps of a traced full epoch between reads of CUPTI's records
CALIBRATION_CYCLES = 20_000_000  # GPU clock cycles of the spin that sizes SFTBENCH_INJECT_GPU_PCT


@dataclass
class EpochTiming:
    step_durations_s: list[float] = field(default_factory=list)
    step_tokens: list[int] = field(default_factory=list)
    optimizer_step_s: float = 0.0
    epoch_seconds: float = 0.0
    optimizer_steps: int = 0
    warmup_s: float = 0.0
    kernels: KernelSteps | None = None  # traced micro-steps; None without a kernel clock
    kernel_weights: list[float] = field(default_factory=list)  # the epoch's steps each traced step stands for
    optimizer_kernel_s: float | None = None
    gpu_epoch_seconds: float | None = None  # kernel time of the epoch, projected (quick) or summed (full)
    kernel_trace_s: float = 0.0  # reading CUPTI's records, outside every timed step
    kernel_steps_s: float = 0.0  # the traced micro-steps of the quick mode, outside every timed step
    wall_noise_pct: float | None = None  # half_split_spread_pct of the quick mode's timed steps


class Trainer:
    def __init__(self, model, corpus, batches: list[Batch], *, sft_type: str, max_length: int,
                 accumulation: int, device: torch.device, amp_dtype: torch.dtype = torch.bfloat16,
                 kernel_timer: KernelTimer | None = None, injection: Injection = Injection()):
        self.model, self.corpus, self.batches = model, corpus, batches
        self.kernel_timer, self.injection = kernel_timer, injection
        self._spin_cycles = None  # tokens -> GPU cycles of the injected spin (SFTBENCH_INJECT_GPU_PCT)
        self._tokens = 0  # of the micro-step running: SFTBENCH_INJECT_KERNELS sizes its spins by them
        self._ballast = None  # the injected allocation (SFTBENCH_INJECT_MEMORY_PCT)
        if (injection.gpu_pct or injection.kernels) and kernel_timer is None:
            raise RuntimeError("SFTBENCH_INJECT_GPU_PCT and SFTBENCH_INJECT_KERNELS need the GPU kernel clock "
                               "(CUDA and cupti-python)")
        self.max_length, self.accumulation, self.device = max_length, accumulation, device
        self.amp_dtype = amp_dtype
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer_steps = math.ceil(len(batches) / accumulation)
        self.optimizer = torch.optim.AdamW(self.params, lr=LEARNING_RATE[sft_type], weight_decay=0.01)
        # Imported here, in the case: transformers.optimization imports peft (see sftbench.worker).
        from transformers import get_cosine_schedule_with_warmup

        self.scheduler = get_cosine_schedule_with_warmup(
            self.optimizer, math.ceil(WARMUP_RATIO * self.optimizer_steps), self.optimizer_steps)

    def micro_step(self, batch: Batch) -> None:
        if self.injection.host_ms:
            time.sleep(self.injection.host_ms / 1000)
        self._tokens = batch.tokens
        inputs = collate(self.corpus, batch, self.max_length, self.device)
        with torch.autocast(self.device.type, dtype=self.amp_dtype):
            loss = self.model(**inputs).loss
        self.scaler.scale(loss / self.accumulation).backward()
        if self._spin_cycles is not None:
            torch.cuda._sleep(self._spin_cycles(batch.tokens))

    def optimizer_step(self) -> None:
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.params, MAX_GRAD_NORM)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def warm_up(self, shortest: Batch, longest: Batch) -> None:
        self.micro_step(shortest)
        self.optimizer_step()
        self.micro_step(longest)

    def run(self, options: RunOptions, progress=print) -> EpochTiming:
        ordered = sorted(self.batches, key=lambda b: -b.tokens)
        warmup = StepTimer(self.device)
        with warmup.step(0):
            self.warm_up(ordered[-1], ordered[0])
        if self.kernel_timer is not None:
            self.kernel_timer.start()
        self._inject(ordered)
        for batch in representatives(ordered, options.settle_steps):
            with warmup.step(batch.tokens):
                self.micro_step(batch)
        timing = EpochTiming(warmup_s=sum(warmup.durations), optimizer_steps=self.optimizer_steps)
        timer = StepTimer(self.device)
        if options.full_epoch:
            self._full_epoch(timer, timing, progress)
        else:
            settle = warmup.durations[1:]
            count = options.representative_steps
            if settle and mean(settle) >= LONG_STEP_S:
                count //= 2
            self._representative_steps(ordered, count, timer, timing, progress)
            if self.kernel_timer is not None:
                self._kernel_steps(ordered, options.kernel_steps, timing, progress)
        if self.kernel_timer is not None:
            started = time.perf_counter()
            timing.kernels = self.kernel_timer.stop()
            timing.kernel_trace_s += time.perf_counter() - started
            timing.gpu_epoch_seconds = self._gpu_epoch_seconds(timing, options.full_epoch)
        return timing

    def _inject(self, ordered: list[Batch]) -> None:
        """Apply the self-test knobs that need the warmed-up case: the memory ballast and the GPU spin's size."""
        if self.injection.memory_pct and self.device.type == "cuda":
            size = int(self.injection.memory_pct / 100 * torch.cuda.max_memory_reserved(self.device))
            self._ballast = torch.empty(size, dtype=torch.uint8, device=self.device)
        if self.injection.gpu_pct or self.injection.kernels:
            timer = self.kernel_timer
            for batch in (ordered[-1], ordered[0]):
                with timer.step(batch.tokens):
                    self.micro_step(batch)
            with timer.step(0):
                torch.cuda._sleep(CALIBRATION_CYCLES)
            timer.collect()
            calibration, timer.steps = timer.steps, KernelSteps()
            (short, long, spin), tokens = calibration.seconds, calibration.tokens
            cycles_per_s = CALIBRATION_CYCLES / spin
            if self.injection.gpu_pct:
                per_token = (long - short) / max(tokens[1] - tokens[0], 1)
                share = self.injection.gpu_pct / 100 * cycles_per_s
                self._spin_cycles = lambda n: int(share * (short + per_token * (n - tokens[0])))
            else:
                timer.after_operator = kernel_spins(calibration, self.injection, cycles_per_s, lambda: self._tokens)

    def _kernel_steps(self, ordered: list[Batch], count: int, timing: EpochTiming, progress) -> None:
        """Kernel time of the batch shapes among `count` representative micro-steps, one step each, and of
        one optimizer step, untimed. Steps of one shape launch the same kernels, whose summed time repeats
        to ~0.1%, so tracing a shape again (the longest batch is often a quarter of an epoch) adds only
        CUPTI's cost, 37-90 us per kernel on H200 hosts (a 7B step launches ~6000)."""
        started, reading_s = time.perf_counter(), 0.0
        shapes = distinct_shapes(representatives(ordered, count))
        for i, batch in enumerate(shapes, 1):
            with self.kernel_timer.step(batch.tokens):
                self.micro_step(batch)
            if i % FLUSH_EVERY == 0:  # many shapes (the projection check traces every one): bound the records held
                read = time.perf_counter()
                self.kernel_timer.collect()
                reading_s += time.perf_counter() - read
                progress(f"traced {i}/{len(shapes)} batch shapes")
        with self.kernel_timer.step(0):
            self.optimizer_step()
        timing.kernel_trace_s += reading_s
        timing.kernel_steps_s = time.perf_counter() - started - reading_s

    def _gpu_epoch_seconds(self, timing: EpochTiming, full_epoch: bool) -> float:
        """The epoch's kernel time: summed over a traced full epoch, else projected like the wall time, as the
        traced steps' seconds times their weights (projection_weights), so that families and kernels project
        alike."""
        steps = timing.kernels
        optimizer = [s for t, s in zip(steps.tokens, steps.seconds) if t == 0]
        timing.optimizer_kernel_s = median(optimizer) if optimizer else 0.0
        timing.kernel_weights = ([1.0] * len(steps.tokens) if full_epoch else
                                 projection_weights(steps.tokens, [b.tokens for b in self.batches], self.optimizer_steps))
        return float(np.dot(timing.kernel_weights, steps.seconds))

    def _full_epoch(self, timer: StepTimer, timing: EpochTiming, progress) -> None:
        optimizer_timer = StepTimer(self.device)
        kernels = self.kernel_timer
        # The warm-up left gradients behind: the epoch starts from a clean accumulation.
        self.optimizer.zero_grad(set_to_none=True)
        for i, batch in enumerate(self.batches, 1):
            with timer.step(batch.tokens), _traced(kernels, batch.tokens):
                self.micro_step(batch)
            if i % self.accumulation == 0 or i == len(self.batches):
                with optimizer_timer.step(0), _traced(kernels, 0):
                    self.optimizer_step()
            if kernels is not None and i % FLUSH_EVERY == 0:
                started = time.perf_counter()
                kernels.collect()
                timing.kernel_trace_s += time.perf_counter() - started
            if i % 100 == 0:
                progress(f"micro-step {i}/{len(self.batches)}, {sum(timer.durations):.1f} s")
        timing.step_durations_s, timing.step_tokens = timer.durations, timer.tokens
        timing.optimizer_step_s = median(optimizer_timer.durations)
        timing.epoch_seconds = sum(timer.durations) + sum(optimizer_timer.durations)

    def _representative_steps(self, ordered: list[Batch], count: int, timer: StepTimer, timing: EpochTiming,
                              progress) -> None:
        for batch in representatives(ordered, count):
            with timer.step(batch.tokens):
                self.micro_step(batch)
        progress(f"timed {len(timer.durations)} representative micro-steps")
        optimizer_timer = StepTimer(self.device)
        for _ in range(OPTIMIZER_TIMINGS):  # each with gradients present, as in the epoch
            with optimizer_timer.step(0):
                self.optimizer_step()
            self.micro_step(ordered[-1])
        timing.step_durations_s, timing.step_tokens = timer.durations, timer.tokens
        timing.optimizer_step_s = median(optimizer_timer.durations)
        epoch_tokens = [b.tokens for b in self.batches]
        timing.epoch_seconds = project_epoch(timer.tokens, timer.durations, epoch_tokens, self.optimizer_steps,
                                             timing.optimizer_step_s)
        timing.wall_noise_pct = half_split_spread_pct(timer.tokens, timer.durations, epoch_tokens,
                                                      self.optimizer_steps, timing.optimizer_step_s)


def kernel_spins(calibration: KernelSteps, injection: Injection, cycles_per_s: float, tokens_now):
    """SFTBENCH_INJECT_KERNELS's hook after each traced operator: for an operator of the target, a GPU spin of
    the knob's share of its family's seconds per such operator, linear in the micro-step's tokens between the
    two calibration steps (the shortest and the longest batch, traced without spins)."""
    targets = KERNEL_TARGETS[injection.kernels]
    points = {}  # family -> [(tokens, seconds per target operator)] at the two calibration steps
    for step in range(2):
        seconds = kernels.step_families(calibration.names, calibration.by_name[step])
        for family in set(targets.values()):
            calls = sum(n for name, n in calibration.operators[step].items() if targets.get(name) == family)
            points.setdefault(family, []).append((calibration.tokens[step], seconds.get(family, 0.0) / max(calls, 1)))

    def spin(name: str) -> None:
        family = targets.get(name)
        if family is not None:
            (x0, y0), (x1, y1) = points[family]
            per_call = y0 + (y1 - y0) * (tokens_now() - x0) / max(x1 - x0, 1)
            torch.cuda._sleep(max(int(injection.kernels_pct / 100 * per_call * cycles_per_s), 1))
    return spin


def _traced(kernels: KernelTimer | None, tokens: int):
    return contextlib.nullcontext() if kernels is None else kernels.step(tokens)


def representatives(ordered: list[Batch], count: int) -> list[Batch]:
    """The longest batch and batches at evenly spaced quantiles of size, longest first."""
    return [ordered[p] for p in representative_positions(len(ordered), count)]


def distinct_shapes(batches: list[Batch]) -> list[Batch]:
    """The first batch of each shape (samples x padded length), in order."""
    seen, first = set(), []
    for batch in batches:
        if (len(batch.indices), batch.padded_length) not in seen:
            seen.add((len(batch.indices), batch.padded_length))
            first.append(batch)
    return first


def representative_positions(length: int, count: int) -> list[int]:
    return sorted({round(q) for q in np.linspace(0, length - 1, min(count, length))})


def project_epoch(step_tokens: list[int], step_durations: list[float], epoch_tokens: list[int],
                  optimizer_steps: int, optimizer_step_s: float) -> float:
    """Epoch seconds: each batch's time interpolated linearly over tokens between timed batches."""
    by_tokens: dict[int, list[float]] = {}
    for tokens, duration in zip(step_tokens, step_durations):
        by_tokens.setdefault(tokens, []).append(duration)
    xs = sorted(by_tokens)
    ys = [mean(by_tokens[x]) for x in xs]
    return float(np.interp(epoch_tokens, xs, ys).sum()) + optimizer_steps * optimizer_step_s


def projection_weights(step_tokens: list[int], epoch_tokens: list[int], optimizer_steps: int) -> list[float]:
    """How many of the epoch's steps each traced step stands for in project_epoch, which is linear in the step
    times: a micro-step (tokens > 0) its share of the interpolated batches, an optimizer step (tokens 0) its
    share of the epoch's optimizer steps."""
    micro = [i for i, tokens in enumerate(step_tokens) if tokens > 0]
    optimizer = [i for i, tokens in enumerate(step_tokens) if tokens == 0]
    weights = [optimizer_steps / len(optimizer) if tokens == 0 else 0.0 for tokens in step_tokens]
    for i in micro:
        weights[i] = project_epoch([step_tokens[j] for j in micro], [float(j == i) for j in micro], epoch_tokens, 0, 0.0)
    return weights


def half_split_spread_pct(step_tokens: list[int], step_durations: list[float], epoch_tokens: list[int],
                          optimizer_steps: int, optimizer_step_s: float) -> float | None:
    """|projection from the even-numbered timed steps - from the odd-numbered| in % of the projection from all:
    the drift and jitter of the run itself (each half spans the batch sizes). None under four steps."""
    if len(step_tokens) < 4:
        return None
    whole, even, odd = (project_epoch(step_tokens[part], step_durations[part], epoch_tokens, optimizer_steps,
                                      optimizer_step_s) for part in (slice(None), slice(0, None, 2), slice(1, None, 2)))
    return 100 * abs(even - odd) / whole


def replay_quick(step_tokens: list[int], step_durations: list[float], optimizer_steps: int, optimizer_step_s: float,
                 count: int) -> float:
    """What the quick mode would project from a full epoch's own steps: the steps at the batches it times,
    measured at their moments in the epoch. Against the epoch's measured time this is the method's error
    alone, without the host's drift between separate runs (scripts/projection_check.py)."""
    order = sorted(range(len(step_tokens)), key=lambda i: -step_tokens[i])
    steps = [order[p] for p in representative_positions(len(order), count)]
    return project_epoch([step_tokens[i] for i in steps], [step_durations[i] for i in steps], step_tokens,
                         optimizer_steps, optimizer_step_s)
