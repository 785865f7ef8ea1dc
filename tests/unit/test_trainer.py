"""sftbench.trainer: choosing representative batches, projecting an epoch, and timing a tiny model on the CPU."""

import contextlib
import math

import numpy as np
import pytest
import torch

from sftbench.data import Batch, SyntheticCorpus, epoch_batches
from sftbench.models import build_model
from sftbench.spec import CaseSpec, RunOptions
from sftbench import trainer as trainer_module
from sftbench.trainer import (FAMILY_REPEATS, OPTIMIZER_TIMINGS, Trainer, by_size, project_epoch, repeated,
                               replay_quick, representatives)
from sftbench.injection import Injection, Injector, kernel_spins
from sftbench.result import Kernels, TracedStep
from sftbench.trackers import StepTimer
from sftbench.case import prepare_for_training


def ordered_batches(n: int) -> list[Batch]:
    """n single-sample batches, longest first, all of different sizes."""
    return [Batch((i,), padded_length=10 * (n - i), real_tokens=10 * (n - i)) for i in range(n)]


# --- representatives -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n, count", [(1000, 32), (100, 32), (33, 32), (32, 32), (10, 32), (500, 2), (7, 3)])
def test_representatives_span_the_epoch_longest_first(n, count):
    ordered = ordered_batches(n)
    chosen = representatives(ordered, count)
    assert len(chosen) == min(count, n)
    assert chosen[0] is ordered[0]  # the longest
    assert chosen[-1] is ordered[-1]  # the shortest
    tokens = [b.tokens for b in chosen]
    assert tokens == sorted(tokens, reverse=True)
    assert len(set(tokens)) == len(tokens)  # no batch twice


def test_representatives_are_evenly_spaced():
    chosen = representatives(ordered_batches(101), 11)
    assert [b.indices[0] for b in chosen] == list(range(0, 101, 10))


def test_batches_of_one_padded_size_are_ordered_by_real_tokens_so_picks_take_padded_ones_in_their_share():
    # 100 batches fill max_length (8 x 1024), 10 of them with padding, as at batch size 8 most batches do.
    full = [Batch(tuple(range(8 * i, 8 * i + 8)), 1024, 8192 - (i % 10 == 3) * 700) for i in range(100)]
    shorter = [Batch((1000 + i,), 10, 10) for i in range(10)]
    ordered = by_size(shorter + full)
    assert [b.tokens for b in ordered] == sorted((b.tokens for b in ordered), reverse=True)
    assert [b.real_tokens for b in ordered[:100]] == [8192] * 90 + [7492] * 10
    picks = representatives(ordered[:100], 10)  # evenly spaced over the tie, as over an epoch's sizes
    assert sum(b.real_tokens < 8192 for b in picks) == 1


def test_a_single_representative_is_the_longest_batch():
    ordered = ordered_batches(50)
    assert representatives(ordered, 1) == [ordered[0]]


# --- project_epoch ---------------------------------------------------------------------------------------------


def test_project_epoch_is_exact_on_a_linear_model():
    def step_time(tokens):
        return 0.02 + 3e-5 * tokens

    timed = [4096, 3000, 2048, 1024, 512]
    epoch = np.random.RandomState(0).randint(512, 4097, size=1000).tolist()
    projected = project_epoch(timed, [step_time(t) for t in timed], epoch, optimizer_steps=0, optimizer_step_s=1.0)
    assert projected == pytest.approx(sum(step_time(t) for t in epoch), rel=1e-9)


def test_project_epoch_takes_the_mean_of_repeated_token_counts_and_adds_optimizer_steps():
    # The mean: an epoch's time is a sum, and its occasional slow step (here 6.0) is part of it.
    projected = project_epoch([100, 100, 100, 200], [1.0, 6.0, 2.0, 3.0], [100, 200, 150],
                              optimizer_steps=4, optimizer_step_s=0.25)
    assert projected == pytest.approx(3.0 + 3.0 + 3.0 + 4 * 0.25)


def test_project_epoch_holds_the_end_values_outside_the_timed_range():
    # Quick mode always times the longest and the shortest batch, so this is only a guard.
    assert project_epoch([100, 200], [1.0, 2.0], [50, 400], 0, 0.0) == pytest.approx(3.0)


# --- Trainer on a tiny CPU model -------------------------------------------------------------------------------

SPEC = CaseSpec("tiny-qwen", device="cpu", attention="sdpa", max_length=256, batch_size=2, samples=12,
                gradient_checkpointing=False)


@pytest.fixture
def trainer():
    torch.manual_seed(0)
    model = prepare_for_training(build_model(SPEC.model_type, attn_implementation=SPEC.attention, device="cpu"), SPEC)
    corpus = SyntheticCorpus(model.get_input_embeddings().num_embeddings, SPEC.samples)
    batches = epoch_batches(corpus.lengths, SPEC.batch_size, SPEC.max_length)
    return Trainer(model, corpus, batches, sft_type=SPEC.sft_type, max_length=SPEC.max_length, accumulation=4,
                   device=torch.device("cpu"))


def count_optimizer_steps(trainer, monkeypatch) -> list[int]:
    calls = []
    step = trainer.optimizer_step

    def counted():
        calls.append(1)
        step()

    monkeypatch.setattr(trainer, "optimizer_step", counted)
    return calls


def test_quick_mode_times_representative_steps_and_projects_the_epoch(trainer, monkeypatch):
    assert len(trainer.batches) == 6 and trainer.optimizer_steps == math.ceil(6 / 4)
    calls = count_optimizer_steps(trainer, monkeypatch)
    progress = []
    epoch = trainer.run(RunOptions(representative_steps=4), progress=progress.append)
    timing = epoch.timing
    ordered = sorted(trainer.batches, key=lambda b: -b.tokens)
    chosen = representatives(ordered, 4) + [ordered[0]] * FAMILY_REPEATS + [ordered[-1]] * FAMILY_REPEATS
    timed = len(chosen)
    assert timing.step_tokens == [b.tokens for b in chosen]
    assert len(timing.step_durations_s) == timed and all(d > 0 for d in timing.step_durations_s)
    assert len(timing.host_probe_s) == timed and all(p > 0 for p in timing.host_probe_s)  # one before each timed step
    assert epoch.overhead["warmup_s"] > 0 and timing.optimizer_step_s > 0 and epoch.kernels is None
    assert epoch.memory is None  # no allocator record on the CPU
    assert (timing.epoch_micro_batches, timing.epoch_optimizer_steps) == (6, 2)
    assert timing.minutes_per_1000_samples == pytest.approx(timing.epoch_seconds / 60 * 1000 / 12)
    assert timing.epoch_tokens == sum(trainer.corpus.lengths.clip(max=trainer.max_length))
    assert len(calls) == 1 + OPTIMIZER_TIMINGS  # the warm-up's, then the timed ones
    assert timing.epoch_seconds > 0
    assert timing.epoch_seconds == pytest.approx(project_epoch(
        timing.step_tokens, timing.step_durations_s, [b.tokens for b in trainer.batches], 2, timing.optimizer_step_s))
    assert progress == [f"timed {timed} representative micro-steps"]


def test_the_optimizer_timings_run_one_after_another_on_the_timed_steps_gradients(trainer, monkeypatch):
    events = []
    micro_step, optimizer_step = trainer.micro_step, trainer.optimizer_step

    def recorded_micro_step(batch):
        events.append("micro")
        micro_step(batch)

    def recorded_optimizer_step():
        events.append(("optimizer", [p.grad for p in trainer.params]))
        optimizer_step()

    monkeypatch.setattr(trainer, "micro_step", recorded_micro_step)
    monkeypatch.setattr(trainer, "optimizer_step", recorded_optimizer_step)
    trainer.run(RunOptions(representative_steps=4, settle_steps=1), progress=lambda line: None)
    timed = events[-OPTIMIZER_TIMINGS:]
    assert events[-OPTIMIZER_TIMINGS - 1] == "micro"  # no micro-step between the timings: they follow the timed steps
    first = timed[0][1]
    assert all(g is not None for g in first)
    assert all(all(a is b for a, b in zip(grads, first)) for _, grads in timed)  # the same gradients each time
    assert all(p.grad is not None for p in trainer.params)  # left present for the steps after them


def test_compiled_code_runs_eagerly_in_every_step_as_under_the_traced_steps_dispatch_mode(trainer, monkeypatch):
    compiled = []

    def backend(graph, inputs):
        compiled.append(graph)
        return graph.forward

    dequantize = torch.compile(lambda x: x * 2 + 1, backend=backend)  # as gptqmodel's TorchLinear compiles its own
    step = trainer.micro_step

    def micro_step(batch):
        dequantize(torch.ones(3))
        step(batch)

    monkeypatch.setattr(trainer, "micro_step", micro_step)
    trainer.run(RunOptions(representative_steps=2, settle_steps=0), progress=lambda line: None)
    assert compiled == []
    dequantize(torch.ones(3))
    assert len(compiled) == 1  # outside the epoch it compiles


def test_quick_mode_times_the_representatives_however_long_its_steps(trainer):
    ordered = sorted(trainer.batches, key=lambda b: -b.tokens)
    for settle in (0, 2):
        timing = trainer.run(RunOptions(representative_steps=4, settle_steps=settle), progress=lambda line: None).timing
        assert timing.step_tokens == [b.tokens for b in representatives(ordered, 4) + repeated(ordered)]


def test_full_mode_times_every_batch_in_training_order(trainer, monkeypatch):
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    calls = count_optimizer_steps(trainer, monkeypatch)
    timing = trainer.run(RunOptions(full_epoch=True), progress=lambda line: None).timing
    assert timing.step_tokens == [b.tokens for b in trainer.batches]
    assert len(timing.step_durations_s) == len(trainer.batches) and all(d > 0 for d in timing.step_durations_s)
    assert len(timing.host_probe_s) == len(trainer.batches)
    assert len(calls) == 1 + trainer.optimizer_steps  # the warm-up's, then one per 4 micro-steps and the rest
    assert timing.optimizer_step_s > 0 and timing.wall_noise_pct is None  # a full epoch's time is not projected
    assert timing.epoch_seconds >= sum(timing.step_durations_s) + timing.optimizer_step_s
    after = dict(trainer.model.named_parameters())
    assert any(not torch.equal(before[n], after[n]) for n in before), "the epoch trained nothing"
    assert all(p.grad is None for p in trainer.params)  # the last optimizer step cleared the gradients


@pytest.mark.parametrize("error, oom", [
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
    (RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"), True),
    (RuntimeError("CUDA error: out of memory"), True),
    (RuntimeError("mat1 and mat2 shapes cannot be multiplied"), False),
])
def test_allocation_failures_of_every_library_count_as_oom(error, oom):
    from sftbench.case import _is_oom

    assert _is_oom(error) is oom


def test_replay_quick_projects_from_the_epochs_own_steps_at_the_representative_batches():
    tokens = [512, 2048, 100, 2048, 900, 1500]
    durations = [0.1 + t / 1e4 for t in tokens]  # linear in tokens: the projection is exact
    assert replay_quick(tokens, tokens, durations, 1, 0.5, count=3) == pytest.approx(sum(durations) + 0.5)
    durations[1] = 9.0  # the longest batch is always one of the timed ones
    assert replay_quick(tokens, tokens, durations, 0, 0.0, count=2) > 9.0
    # Among steps of one padded size the one with more real tokens comes first, as in the quick mode (by_size).
    assert replay_quick(tokens, [512, 2000, 100, 2048, 900, 1500], durations, 0, 0.0, count=2) < 9.0


class FakeKernelTimer:
    """A KernelTimer whose steps take 1e-4 s of GEMMs per token (an optimizer step 0.01 s), and count 3 operators
    and 5 API calls where they count them."""

    def __init__(self):
        self.record, self.pending, self.step_limits = Kernels(clock="fake", names=["nvjet"]), [], []
        self.collections = []  # how many steps had been traced at each reading of the records

    def start(self):
        pass

    @property
    def traced(self):
        return len(self.record.steps) + len(self.pending)

    @contextlib.contextmanager
    def step(self, tokens, count_operators=True, count_api_calls=True):
        yield
        seconds = tokens * 1e-4 if tokens else 0.01
        self.pending.append(TracedStep(tokens=tokens, seconds=seconds, kernels=[[0, 7, round(seconds * 1e9)]],
                                       families={"GEMM": seconds}, operators={"aten::mm": 3} if count_operators else {},
                                       api_calls={"cudaLaunchKernel": 5} if count_api_calls else None))

    def collect(self, keep=True):
        self.collections.append(self.traced)
        steps, self.pending = self.pending, []
        self.record.steps += steps if keep else []
        return steps

    def stop(self):
        self.collect()
        return self.record


def test_quick_mode_traces_its_timed_steps_counts_in_one_untimed_step_and_projects_gpu_time(trainer):
    trainer.kernel_timer = FakeKernelTimer()
    epoch = trainer.run(RunOptions(representative_steps=4), progress=lambda line: None)
    ordered = sorted(trainer.batches, key=lambda b: -b.tokens)
    chosen = representatives(ordered, 4)
    record, timing = epoch.kernels, epoch.timing
    # The timed representatives, the repeats, the timed optimizer steps, then the counted step (the longest batch).
    assert [s.tokens for s in record.steps] == timing.step_tokens + [0] * OPTIMIZER_TIMINGS + [ordered[0].tokens]
    timed, counted = record.steps[:-1], record.steps[-1]
    assert counted.weight == 0.0 and counted.repeat_of is None and counted.operators and counted.api_calls
    assert all(not s.operators and s.api_calls is None for s in timed)  # no timed step counts
    assert all(s.weight > 0 for s in timed)  # the repeats' time is the projection's too
    repeats = timed[len(chosen):len(chosen) + 2 * FAMILY_REPEATS]
    assert [s.repeat_of for s in repeats] == [0] * FAMILY_REPEATS + [len(chosen) - 1] * FAMILY_REPEATS
    assert all(s.repeat_of is None for s in timed[:len(chosen)] + timed[-OPTIMIZER_TIMINGS:])
    assert record.optimizer_s == 0.01
    assert sum(s.weight for s in timed if s.tokens == 0) == pytest.approx(trainer.optimizer_steps)
    assert record.micro_steps == pytest.approx(len(trainer.batches))
    assert record.epoch_seconds == pytest.approx(
        sum(b.tokens * 1e-4 for b in trainer.batches) + trainer.optimizer_steps * 0.01, rel=0.05)
    assert record.gpu_minutes_by_family == {"GEMM": pytest.approx(record.gpu_minutes_per_1000_samples)}
    assert record.busy_pct == pytest.approx(100 * record.epoch_seconds / timing.epoch_seconds)
    assert {"counted_step_s", "timed_steps_s", "kernel_read_s", "warmup_s"} <= epoch.overhead.keys()


def test_a_full_epoch_traces_every_step_counts_in_one_untimed_step_and_repeats_outside_its_time(trainer):
    trainer.kernel_timer = FakeKernelTimer()
    epoch = trainer.run(RunOptions(full_epoch=True), progress=lambda line: None)
    steps = epoch.kernels.steps
    longest = max(trainer.batches, key=lambda b: b.tokens)
    after = 1 + 2 * FAMILY_REPEATS  # the counted step, then the repeats
    epoch_steps, counted, repeats = steps[:-after], steps[-after], steps[-after + 1:]
    assert counted.tokens == longest.tokens and counted.operators and counted.api_calls is not None
    assert [s for s in steps if s.operators or s.api_calls is not None] == [counted]
    assert [s.tokens for s in epoch_steps if s.tokens] == [b.tokens for b in trainer.batches]
    assert len([s for s in epoch_steps if not s.tokens]) == trainer.optimizer_steps
    assert all(s.weight == 1.0 and s.repeat_of is None for s in epoch_steps)
    assert all(s.weight == 0.0 and s.repeat_of is not None for s in repeats)
    assert counted.weight == 0.0 and counted.repeat_of is None


def test_a_quick_run_of_many_steps_reads_the_records_as_it_goes_and_says_so(trainer, monkeypatch):
    monkeypatch.setattr(trainer_module, "FLUSH_EVERY", 2)
    trainer.kernel_timer = FakeKernelTimer()
    lines = []
    epoch = trainer.run(RunOptions(representative_steps=len(trainer.batches)), progress=lines.append)
    timed = len(trainer.batches) + 2 * FAMILY_REPEATS
    assert len(epoch.kernels.projected_steps) == timed + OPTIMIZER_TIMINGS
    assert trainer.kernel_timer.collections[:timed // 2] == list(range(2, timed + 1, 2))  # every 2 timed micro-steps
    assert f"timed 2/{timed} micro-steps" in lines


def test_injected_host_time_lengthens_every_micro_step(trainer):
    trainer.injector = Injector(Injection(host_ms=30), None, torch.device("cpu"))
    timer = StepTimer(torch.device("cpu"))
    with timer.step(0):
        trainer.micro_step(trainer.batches[-1])
    assert timer.durations[0] >= 0.030


def test_the_traced_steps_weights_reproduce_the_projection_of_any_per_step_quantity():
    from sftbench.trainer import project_epoch, projection_weights

    tokens, epoch = [2048, 1024, 1024, 300, 0], [2048, 2048, 1500, 1024, 700, 300, 300]
    seconds = [0.4, 0.21, 0.19, 0.05, 0.002]
    weights = projection_weights(tokens, epoch, optimizer_steps=3)
    assert weights[4] == 3.0 and sum(weights[:4]) == pytest.approx(len(epoch))
    micro = [i for i, t in enumerate(tokens) if t]
    assert sum(w * s for w, s in zip(weights, seconds)) == pytest.approx(
        project_epoch([tokens[i] for i in micro], [seconds[i] for i in micro], epoch, 3, 0.002))


def test_the_kernel_injection_spins_after_its_targets_own_operators_by_their_familys_time(monkeypatch):
    operators = {"flash_attn::_flash_attn_forward": 32, "aten::mm": 100}
    calibration = [TracedStep(tokens=512, seconds=0.01, families={"attention forward": 0.002, "GEMM": 0.008},
                              operators=operators),
                   TracedStep(tokens=2048, seconds=0.038, families={"attention forward": 0.008, "GEMM": 0.030},
                              operators=operators)]
    spins = []
    monkeypatch.setattr(torch.cuda, "_sleep", spins.append)
    tokens = [1280]
    spin = kernel_spins(calibration, Injection(kernels="attention", kernels_pct=10), 1e9, lambda: tokens[0])
    spin("aten::mm")  # not the target's
    spin("flash_attn::_flash_attn_forward")
    # 10% of the attention forward's seconds per call, halfway between 2 ms / 32 and 8 ms / 32 per step: 156.25 us
    assert spins == [15625]


def test_the_timed_steps_and_the_full_epochs_repeats_run_with_gradients_present(trainer, monkeypatch):
    """A backward that allocates the gradients launches other kernels than the accumulating ones it is compared with:
    the quick mode's timed steps, the counted step and a full epoch's repeats run with gradients present, though the
    timed optimizer steps and a full epoch end on an optimizer step (inside the epoch, as in training, a step after
    an optimizer step allocates them); the allocator's record comes last."""
    timer = trainer.kernel_timer = FakeKernelTimer()
    present = []
    step = timer.step

    @contextlib.contextmanager
    def traced_step(tokens, count_operators=True, count_api_calls=True):
        if tokens:
            present.append(all(p.grad is not None for p in trainer.params))
        with step(tokens, count_operators, count_api_calls):
            yield

    monkeypatch.setattr(timer, "step", traced_step)
    trainer.memory_by_category = True
    recorded = []
    monkeypatch.setattr(trainer_module.memory, "categories_at_peak", lambda t, batch: recorded.append(len(present)))
    trainer.run(RunOptions(representative_steps=4, settle_steps=1), progress=lambda line: None)
    assert len(present) == 4 + 2 * FAMILY_REPEATS + 1 and all(present)
    assert recorded == [len(present)]  # after every traced step
    present.clear()
    trainer.run(RunOptions(full_epoch=True, settle_steps=1), progress=lambda line: None)
    assert all(present[-1 - 2 * FAMILY_REPEATS:])
