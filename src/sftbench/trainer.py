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
step is timed (a one-off cost in a real epoch, not one step in 16). Then `settle_steps` more
untimed micro-steps at representative sizes.

The projection takes the mean of repeated token counts, not their median: an epoch's time is a
sum, and the occasional slow step is part of it. The quick mode times the longest and the shortest
batch FAMILY_REPEATS more times after the representatives: how much each kernel family repeats,
for its verdict; a full epoch traces those repeats after its last step, outside its time.

GPU kernel time (a KernelTimer, where CUPTI is available) comes from the timed steps themselves, traced
for their kernels alone, and is projected over the epoch like the wall time. The tracing stays in the
wall time: on an H100 it added 1.7-2.5% to the median of host-bound 7B steps (docs/measurements.md
section 18), where separate traced steps had cost a case a third of its time. CUPTI's records are read
every FLUSH_EVERY micro-steps and at the end, between timed steps. What the host did is counted in one more untimed
traced step of the longest batch, after the timed ones: its torch operators (a Python dispatch mode)
and its CUDA API calls (a Python callback on every call), which made a host-bound step 4-9 times slower
(section 16); the verdicts read those counts (sftbench.verdicts.host_work_changes). The self-test's
kernel spins ride on that dispatch mode, so under SFTBENCH_INJECT_KERNELS every traced step, the timed
ones included, runs in it: that run's wall time is the knob's, never compared clean.
Last, on a GPU, one more micro-step of the longest batch and an optimizer step run with the allocator recording,
to sort the memory at the peak by category (sftbench.memory). Taken first instead, right after the warm-up,
full fine-tuning at 8192 tokens ran out of memory on an H100 (8.25 GiB cached but unallocated could not hold a
4.64 GiB request) where, taken last, it fits (docs/measurements.md sections 17 and 18).
Before each timed step, a fixed burst of tiny kernel launches (trackers.host_probe_s) measures the host's
own pace, which wall time of host-bound steps follows between runs.
The self-test's knobs act through an Injector (sftbench.injection) around each micro-step.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from statistics import mean, median

import numpy as np
import torch

from sftbench import kernels, memory
from sftbench.data import Batch, collate
from sftbench.injection import Injection, Injector
from sftbench.result import Kernels, MemoryCategories, Timing, minutes_per_1000_samples
from sftbench.spec import RunOptions
from sftbench.trackers import KernelTimer, StepTimer, host_probe_s

MAX_GRAD_NORM = 0.5
WARMUP_RATIO = 0.05
LEARNING_RATE = {"lora": 1e-4, "full": 2e-5}
OPTIMIZER_TIMINGS = 3
FLUSH_EVERY = 50  # traced micro-steps between reads of CUPTI's records (a full epoch, a quick run of many)
# Repeats of the shortest and the longest traced micro-step: how much each family's share of a step repeats
# (kernels.family_noise_pct), from 2 x 2 degrees of freedom, for the family verdicts (sftbench.verdicts). The H100
# runs of docs/measurements.md sections 13-14 replayed with their 3 repeats cut to 2 (scripts/replay_fewer_steps.py)
# judged their families alike: attention:3 and gemm:3 flagged and named in 8 of 8, no family failed in the 40
# comparisons without a kernel change; the attention families' thresholds rose from at most 2.84% to 3.22%. Run on
# an H100 (section 15), they flagged and named the same and failed no clean row, but judged attention forward, the
# noisiest family, above 3% in 4 of 48 comparisons (at most 4.36%, LoRA 8192); every other family at 2%.
FAMILY_REPEATS = 2


@dataclass
class TrainedEpoch:
    """What Trainer.run measured: the wall-time record, the kernel record (None without a kernel clock), the
    memory at the peak by category (None on the CPU), and where the trainer's own time went (warm-up, tracing,
    reading CUPTI's records, recording the allocator), in seconds."""

    timing: Timing
    kernels: Kernels | None = None
    memory: MemoryCategories | None = None
    overhead: dict[str, float] = field(default_factory=dict)


class Trainer:
    def __init__(self, model, corpus, batches: list[Batch], *, sft_type: str, max_length: int,
                 accumulation: int, device: torch.device, amp_dtype: torch.dtype = torch.bfloat16,
                 kernel_timer: KernelTimer | None = None, injection: Injection = Injection()):
        self.model, self.corpus, self.batches = model, corpus, batches
        self.kernel_timer = kernel_timer
        self.injector = Injector(injection, kernel_timer, device)  # the self-test's knobs (sftbench.injection)
        self._first_traced: dict[tuple[int, ...], int] = {}  # a batch's samples -> index of its first traced step
        self._repeats: dict[int, int] = {}  # index of a traced repeat -> index of the step it repeats
        self._projected: list[int] = []  # indices of the traced steps that were timed: the projection weighs them
        self.max_length, self.accumulation, self.device = max_length, accumulation, device
        self.memory_by_category = device.type == "cuda"  # the caching allocator's record exists on a GPU only
        self.amp_dtype = amp_dtype
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        self._probe_scratch = torch.zeros(1, device=device)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer_steps = math.ceil(len(batches) / accumulation)
        self.optimizer = torch.optim.AdamW(self.params, lr=LEARNING_RATE[sft_type], weight_decay=0.01)
        # Imported here, in the case: transformers.optimization imports peft (see sftbench.case).
        from transformers import get_cosine_schedule_with_warmup

        self.scheduler = get_cosine_schedule_with_warmup(
            self.optimizer, math.ceil(WARMUP_RATIO * self.optimizer_steps), self.optimizer_steps)

    def micro_step(self, batch: Batch) -> None:
        self.injector.before_micro_step(batch.tokens)
        inputs = collate(self.corpus, batch, self.max_length, self.device)
        with torch.autocast(self.device.type, dtype=self.amp_dtype):
            loss = self.model(**inputs).loss
        self.scaler.scale(loss / self.accumulation).backward()
        self.injector.after_micro_step(batch.tokens)

    def optimizer_step(self) -> None:
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.params, MAX_GRAD_NORM)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.injector.after_optimizer_step()

    def ensure_gradients(self, batch: Batch) -> None:
        """Run `batch` untraced where an optimizer step left no gradients: the epoch's micro-steps, its worst memory
        state among them, run with gradients present, and a backward that allocates them launches other kernels
        than one that adds to them (on an H100, full fine-tuning's first step after an optimizer step launched 5021
        kernels instead of 5280)."""
        if any(p.grad is None for p in self.params):
            self.micro_step(batch)

    def warm_up(self, shortest: Batch, longest: Batch) -> None:
        self.micro_step(shortest)
        self.optimizer_step()
        self.micro_step(longest)

    # A traced step's operator-counting dispatch mode runs torch.compile'd code op by op, so a timed step running it
    # compiled would run other kernels than the traced one: every step runs it eagerly. gptqmodel 7.6's TorchLinear
    # compiles its dequantization; its traced GPU time exceeded the timed steps' wall time on an H100 (measurements
    # section 16). The seed's GPTQ training ran that dequantization eagerly too.
    @torch.compiler.set_stance("force_eager")
    def run(self, options: RunOptions, progress=print) -> TrainedEpoch:
        ordered = by_size(self.batches)
        warmup = StepTimer(self.device)
        with warmup.step(0):
            self.warm_up(ordered[-1], ordered[0])
        if self.kernel_timer is not None:
            self.kernel_timer.start()
        self.injector.prepare(self.micro_step, ordered[-1], ordered[0], self.model, self.optimizer)
        for batch in representatives(ordered, options.settle_steps):
            with warmup.step(batch.tokens):
                self.micro_step(batch)
        epoch = TrainedEpoch(self._timing(), overhead={"warmup_s": sum(warmup.durations), "kernel_read_s": 0.0})
        timer = StepTimer(self.device)
        started = time.perf_counter()
        if options.full_epoch:
            self._full_epoch(timer, epoch, progress)
        else:
            self._representative_steps(ordered, options.representative_steps, timer, epoch, progress)
        epoch.overhead["timed_steps_s"] = time.perf_counter() - started - epoch.overhead["kernel_read_s"]
        timing = epoch.timing
        samples = len(self.corpus.lengths)
        timing.minutes_per_1000_samples = minutes_per_1000_samples(timing.epoch_seconds, samples)
        timing.tokens_per_s = timing.epoch_tokens / timing.epoch_seconds
        timing.samples_per_s = samples / timing.epoch_seconds
        if self.kernel_timer is not None:
            self._counted_step(ordered, epoch.overhead)
            if options.full_epoch:  # the quick mode repeated its steps among its timed ones
                self._repeat_steps(ordered, epoch.overhead)
            read = time.perf_counter()
            epoch.kernels = self.kernel_timer.stop()
            mark_repeats(epoch.kernels, self._repeats)
            epoch.overhead["kernel_read_s"] += time.perf_counter() - read
            self._project_kernels(epoch, options.full_epoch)
        if self.memory_by_category:
            self._memory_categories(ordered[0], epoch, progress)
        return epoch

    def _memory_categories(self, longest: Batch, epoch: TrainedEpoch, progress) -> None:
        """The memory at the peak by category (sftbench.memory), after everything timed and traced. A failure
        there is said and leaves the case's measurements as they are."""
        started = time.perf_counter()
        try:
            epoch.memory = memory.categories_at_peak(self, longest)
        except Exception as error:  # noqa: BLE001 - the categories explain memory; the case stands without them
            progress(f"memory by category not taken ({type(error).__name__}: {error})")
        epoch.overhead["memory_categories_s"] = time.perf_counter() - started

    def _timing(self) -> Timing:
        return Timing(epoch_micro_batches=len(self.batches), epoch_optimizer_steps=self.optimizer_steps,
                      epoch_tokens=int(self.corpus.lengths.clip(max=self.max_length).sum()))

    def _counted_step(self, ordered: list[Batch], overhead: dict[str, float]) -> None:
        """One untimed traced micro-step of the longest batch, with gradients present as in the timed steps, that
        counts what the host did: its torch operators and CUDA API calls (verdicts.host_work_changes). Counting
        slows the host, each operator through a Python dispatch mode, each API call through a Python callback
        (a host-bound step about 4-9 times: docs/measurements.md section 16), so no timed step counts."""
        started = time.perf_counter()
        self.ensure_gradients(ordered[-1])  # a full epoch ends on an optimizer step
        longest = ordered[0]
        with self.kernel_timer.step(longest.tokens, count_operators=True, count_api_calls=True):
            self.micro_step(longest)
        overhead["counted_step_s"] = time.perf_counter() - started

    def _repeat_steps(self, ordered: list[Batch], overhead: dict[str, float]) -> None:
        """After a full epoch: trace the shortest and the longest batch FAMILY_REPEATS more times each, noting each
        in `_repeats` as a repeat of the epoch's step of the same batch (mark_repeats), outside the projection. With
        gradients present, as the steps they repeat ran (the epoch ends on an optimizer step)."""
        started = time.perf_counter()
        self.ensure_gradients(ordered[-1])
        for batch in repeated(ordered):
            self._traced_micro_step(batch, None, None)
        overhead["kernel_repeats_s"] = time.perf_counter() - started

    def _traced_micro_step(self, batch: Batch, timer: StepTimer | None, timing: Timing | None) -> None:
        """A micro-step traced for its kernels alone (where there is a kernel clock), and wall-timed inside that by
        `timer` (after a probe of the host's pace) where given: the projection weighs the timed ones. A step of a
        batch traced before is a repeat of that step (mark_repeats)."""
        if timing is not None:
            self._probe_host(timing)
        if self.kernel_timer is not None:
            index = self.kernel_timer.traced
            first = self._first_traced.setdefault(batch.indices, index)
            if first != index:
                self._repeats[index] = first
        with self._kernels(batch.tokens, timer is not None), \
                (timer.step(batch.tokens) if timer is not None else contextlib.nullcontext()):
            self.micro_step(batch)

    def _timed_optimizer_step(self, timer: StepTimer) -> None:
        with self._kernels(0, timed=True), timer.step(0):
            self.optimizer_step()

    def _kernels(self, tokens: int, timed: bool):
        """The next step's kernels traced alone, where there is a kernel clock; a timed step is one the projection
        weighs."""
        if self.kernel_timer is None:
            return contextlib.nullcontext()
        if timed:
            self._projected.append(self.kernel_timer.traced)
        return self.kernel_timer.step(tokens, count_operators=False, count_api_calls=False)

    def _collect_every(self, i: int, epoch: TrainedEpoch) -> None:
        """Read CUPTI's records every FLUSH_EVERY traced micro-steps, between timed steps: bounds the records held."""
        if self.kernel_timer is not None and i % FLUSH_EVERY == 0:
            started = time.perf_counter()
            self.kernel_timer.collect()
            epoch.overhead["kernel_read_s"] += time.perf_counter() - started

    def _project_kernels(self, epoch: TrainedEpoch, full_epoch: bool) -> None:
        """The epoch's kernel time from the timed steps' kernels: summed over a full epoch, else projected like the
        wall time, as their seconds times their weights (projection_weights), so that families and kernels project
        alike; GPU-minutes, by family too, and how busy the GPU was against the wall time. The counted step and a
        full epoch's repeats weigh nothing."""
        record, samples = epoch.kernels, len(self.corpus.lengths)
        steps = [record.steps[i] for i in self._projected]
        weights = ([1.0] * len(steps) if full_epoch else
                   projection_weights([s.tokens for s in steps], [b.tokens for b in self.batches], self.optimizer_steps))
        for step in record.steps:
            step.weight = 0.0
        for step, weight in zip(steps, weights):
            step.weight = weight
        optimizer = [s.seconds for s in steps if s.tokens == 0]
        record.optimizer_s = median(optimizer) if optimizer else 0.0
        record.epoch_seconds = float(np.dot(weights, [s.seconds for s in steps]))
        record.gpu_minutes_per_1000_samples = minutes_per_1000_samples(record.epoch_seconds, samples)
        record.gpu_minutes_by_family = {family: minutes_per_1000_samples(seconds, samples)
                                        for family, seconds in (kernels.epoch_families(record) or {}).items()}
        record.busy_pct = 100 * record.epoch_seconds / epoch.timing.epoch_seconds

    def _full_epoch(self, timer: StepTimer, epoch: TrainedEpoch, progress) -> None:
        optimizer_timer = StepTimer(self.device)
        # The warm-up left gradients behind: the epoch starts from a clean accumulation.
        self.optimizer.zero_grad(set_to_none=True)
        for i, batch in enumerate(self.batches, 1):
            self._traced_micro_step(batch, timer, epoch.timing)
            if i % self.accumulation == 0 or i == len(self.batches):
                self._timed_optimizer_step(optimizer_timer)
            self._collect_every(i, epoch)
            if i % 100 == 0:
                progress(f"micro-step {i}/{len(self.batches)}, {sum(timer.durations):.1f} s")
        timing = epoch.timing
        timing.step_durations_s, timing.step_tokens = timer.durations, timer.tokens
        timing.optimizer_step_s = median(optimizer_timer.durations)
        timing.epoch_seconds = sum(timer.durations) + sum(optimizer_timer.durations)

    def _representative_steps(self, ordered: list[Batch], count: int, timer: StepTimer, epoch: TrainedEpoch,
                              progress) -> None:
        """Time the representatives, then the longest and the shortest batch FAMILY_REPEATS more times each (how
        much each kernel family's time repeats, for its verdict; their wall time joins the projection's mean), then
        OPTIMIZER_TIMINGS optimizer steps, each on the gradients the timed micro-steps left."""
        chosen = representatives(ordered, count) + repeated(ordered)
        for i, batch in enumerate(chosen, 1):
            self._traced_micro_step(batch, timer, epoch.timing)
            self._collect_every(i, epoch)
            if i % FLUSH_EVERY == 0:
                progress(f"timed {i}/{len(chosen)} micro-steps")
        progress(f"timed {len(timer.durations)} representative micro-steps")
        optimizer_timer = StepTimer(self.device)
        gradients = [p.grad for p in self.params]
        for _ in range(OPTIMIZER_TIMINGS):
            self._timed_optimizer_step(optimizer_timer)
            # The same gradients again, instead of a micro-step to make new ones: the next timing launches the same
            # kernels, and the steps after it find gradients present as in the epoch.
            for param, gradient in zip(self.params, gradients):
                param.grad = gradient
        timing = epoch.timing
        timing.step_durations_s, timing.step_tokens = timer.durations, timer.tokens
        timing.optimizer_step_s = median(optimizer_timer.durations)
        epoch_tokens = [b.tokens for b in self.batches]
        timing.epoch_seconds = project_epoch(timer.tokens, timer.durations, epoch_tokens, self.optimizer_steps,
                                             timing.optimizer_step_s)
        timing.wall_noise_pct = half_split_spread_pct(timer.tokens, timer.durations, epoch_tokens,
                                                      self.optimizer_steps, timing.optimizer_step_s)

    def _probe_host(self, timing: Timing) -> None:
        """The host's pace just before a timed step (trackers.host_probe_s), outside it."""
        timing.host_probe_s.append(host_probe_s(self._probe_scratch))


def mark_repeats(record: Kernels, repeats: dict[int, int]) -> None:
    """Mark the record's steps at these indices as repeats of the step at their value, the first traced step of the
    same batch: kernels.family_noise_pct reads them."""
    for index, original in repeats.items():
        record.steps[index].repeat_of = original


def repeated(ordered: list[Batch]) -> list[Batch]:
    """The batches run again to see how much each kernel family repeats: the longest, then the shortest,
    FAMILY_REPEATS times each."""
    return [ordered[0]] * FAMILY_REPEATS + [ordered[-1]] * FAMILY_REPEATS


def by_size(batches: list[Batch]) -> list[Batch]:
    """Longest first. Among batches of equal padded size (at batch size > 1 most batches fill max_length), the ones
    with more real tokens first, so that evenly spaced picks take padded and unpadded batches of a size in their
    share of the epoch: flash-attn unpads a padded batch, which costs it ~31 ms at 8192 tokens (measurements
    section 19)."""
    return sorted(batches, key=lambda b: _size_order(b.tokens, b.real_tokens))


def _size_order(tokens: int, real_tokens: int) -> tuple[int, int]:
    return -tokens, -real_tokens


def representatives(ordered: list[Batch], count: int) -> list[Batch]:
    """The longest batch and batches at evenly spaced quantiles of size, longest first."""
    return [ordered[p] for p in representative_positions(len(ordered), count)]


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


def replay_quick(step_tokens: list[int], real_tokens: list[int], step_durations: list[float], optimizer_steps: int,
                 optimizer_step_s: float, count: int) -> float:
    """What the quick mode would project from a full epoch's own steps: the steps at the batches it times (ordered
    as by_size orders them, by the steps' padded and real tokens), measured at their moments in the epoch. Against
    the epoch's measured time this is the method's error alone, without the host's drift between separate runs
    (scripts/projection_check.py)."""
    order = sorted(range(len(step_tokens)), key=lambda i: _size_order(step_tokens[i], real_tokens[i]))
    steps = [order[p] for p in representative_positions(len(order), count)]
    return project_epoch([step_tokens[i] for i in steps], [step_durations[i] for i in steps], step_tokens,
                         optimizer_steps, optimizer_step_s)
