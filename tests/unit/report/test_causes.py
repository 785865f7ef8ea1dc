"""sftbench.report.causes: fidelity notes (memory, outcomes, reversed trends, wall/GPU time disagreements) and
their causes."""

import pytest

from sftbench.report import markdown
from sftbench.result import MemoryCategories, MemoryGroup, MemoryPeaks

# A memory diagnostic's peak, as `python -m sftbench profile ROW --memory` writes it.
MEMORY_AT_PEAK = {"batch_tokens": 8192, "allocated_before_mib": 14859, "groups_mib": [
    ["`shift_logits = logits[..., :-1, :].contiguous()` (qwen.py:182)", 7121, 4], ["in the backward pass", 4747, 2],
    ["`return hidden_states` (qwen.py:140)", 1984, 31], ["`x` (qwen.py:59)", 128, 1]]}

# Full fine-tuning's allocated peak: the optimizer step's states and a temporary, not the activations.
OPTIMIZER_STEP_PEAK = MemoryCategories(73708.0, 14729.0, 0.0, 14727.0, 29459.0, 14793.0, 1314.0, [
    MemoryGroup("`self.scaler.step(self.optimizer)` (trainer.py:120)", 14727.3, 259)])


def test_fidelity_notes_list_memory_beyond_10_percent_outcomes_and_reversed_trends(
        result_factory, lora, full, results_of, sections):
    results = results_of(
        result_factory(lora(max_length=1024), minutes=5.0, reserved=17096 * 1.05),  # within 10%: no note
        result_factory(lora(max_length=2048), minutes=4.0, reserved=19362 * 1.2),  # in six tables: one note
        result_factory(lora(max_length=4096), minutes=10.0, reserved=29264 * 0.8),
        result_factory(lora(quantization="int4-bnb"), reserved=13616 * 2),  # not bf16: no note
        result_factory(full(max_length=8192), reserved=88080.0, allocated=73712.0,
                       memory=MemoryPeaks(max_reserved_mib=88080.0, max_allocated_mib=73712.0, nvml_peak_mib=89460.0,
                                          categories=OPTIMIZER_STEP_PEAK)),
        result_factory(full(model_type="qwen-14b-chat", max_length=512),
                       memory=MemoryPeaks(max_reserved_mib=135454.0, max_allocated_mib=135336.0, nvml_peak_mib=136832.0)),
    )
    notes = sections(markdown(results))
    memory = notes["Memory more than 10% off the seed (bf16 rows)"][1]
    assert [cells[1:] for cells in memory] == [["19362", "23234", "1.20", "not yet measured"],
                                              ["29264", "23411", "0.80", "not yet measured"]]
    assert memory[0][0].count("`test_") == 6 and "`test_lora_max_length[qwen-7b-chat-2048]`" in memory[0][0]
    assert memory[1][0] == "`test_lora_max_length[qwen-7b-chat-4096]`"
    assert notes["Outcome differs from the seed"][1] == [
        ["`test_full_max_length[qwen-7b-chat-8192]`", "OOM", "OK, 88080 MiB",
         ("fits the seed's 80 GB (81920 MiB): 73712 MiB allocated at its peak and 1380 MiB outside PyTorch's "
          "allocator; at that peak, in MiB: trainable parameters 14729, gradients 14727, optimizer states 29459, "
          "activations and temporaries 14793, of which 14727 MiB at `self.scaler.step(self.optimizer)` "
          "(trainer.py:120); the 88080 MiB reserved here is what this card's allocator kept, not what the case "
          "needs")],
        ["`test_full_max_length[qwen-14b-chat-512]`", "OOM", "OK, 135454 MiB",
         ("needs more than the seed's 80 GB (81920 MiB): 135336 MiB allocated at its peak and 1378 MiB outside "
          "PyTorch's allocator; this GPU has 143771 MiB")]]
    assert notes["Within-table trend goes the other way"][1] == [
        ["Max Length (LoRA)", "qwen-7b-chat-1024 → qwen-7b-chat-2048", "min", "4.11 → 7.01 (+71%)",
         "5.00 → 4.00 (-20%)", "not yet measured"]]


def test_a_reversed_time_trend_of_cpu_bound_steps_says_so_and_a_flat_one_is_no_trend(
        result_factory, lora, full, results_of, sections):
    results = results_of(
        # 512 -> 1024 tokens per step at the same step time: the minutes cannot follow the seed's +63%.
        result_factory(lora(max_length=512), minutes=4.03, step_durations_s=[0.24] * 3, step_tokens=[512] * 3),
        result_factory(lora(max_length=1024), minutes=4.01, step_durations_s=[0.25] * 3, step_tokens=[1024] * 3),
        # 73836 -> 73834 MiB against the seed's +0.55%: under 1% in both, not a trend.
        result_factory(full(max_length=512), reserved=73836.0),
        result_factory(full(max_length=1024), reserved=73834.0),
    )
    trends = sections(markdown(results))["Within-table trend goes the other way"][1]
    assert [cells[1:3] + cells[5:] for cells in trends] == [
        ["qwen-7b-chat-512 → qwen-7b-chat-1024", "min",
         "host-bound steps here: the median timed step takes 0.24 s at 512 tokens and 0.25 s at 1024"]]


@pytest.mark.parametrize("bs1_steps, bs2_steps, minutes, cause", [
    # bs2 steps hold twice the tokens and take 1.5x as long: the epoch gets faster, the seed's got slower.
    (([0.28] * 3, [1800] * 3), ([0.42] * 3, [3600] * 3), (4.52, 3.54),
     "host-bound steps here: the median timed step takes 0.28 s at 1800 tokens and 0.42 s at 3600"),
    # bs1's 107-token step costs 0.25 s, its 2048-token one 0.30 s: bs2 pays that floor once per two samples.
    (([0.30, 0.26, 0.25], [2048, 2048, 107]), ([0.46] * 3, [4096] * 3), (4.49, 3.45),
     "a per-step host cost: in qwen-7b-chat-bs1 the shortest timed step (107 tokens) takes 0.25 s, "
     "the longest (2048 tokens) 0.30 s"),
])
def test_a_host_bound_batch_size_trend_says_why(
        result_factory, lora, results_of, sections, bs1_steps, bs2_steps, minutes, cause):
    results = results_of(
        result_factory(lora(), minutes=minutes[0], step_durations_s=bs1_steps[0], step_tokens=bs1_steps[1]),
        result_factory(lora(batch_size=2), minutes=minutes[1], step_durations_s=bs2_steps[0],
                       step_tokens=bs2_steps[1]),
    )
    trends = sections(markdown(results))["Within-table trend goes the other way"][1]
    assert [cells[1:3] + cells[5:] for cells in trends] == [["qwen-7b-chat-bs1 → qwen-7b-chat-bs2", "min", cause]]


def test_memory_diagnostics_give_the_memory_notes_their_cause(result_factory, lora, results_of, sections):
    spec = lora(max_length=8192)
    diagnostics = {spec.key: MEMORY_AT_PEAK}
    memory = sections(markdown(results_of(result_factory(spec, reserved=32438.0)), diagnostics=diagnostics))
    [[_, _, _, _, cause]] = memory["Memory more than 10% off the seed (bf16 rows)"][1]
    assert cause == ("at the peak of its longest micro-step (8192 tokens), above the 14859 MiB held before it: "
                     "7121 MiB `shift_logits = logits[..., :-1, :].contiguous()` (qwen.py:182), 4747 MiB in the "
                     "backward pass, 1984 MiB `return hidden_states` (qwen.py:140) (python -m sftbench profile ROW --memory)")


def clocked(result_factory, spec, wall: float, gpu: float | None):
    """A result with both clocks: `wall` minutes and `gpu` GPU-minutes per 1000 samples (None: no GPU clock)."""
    if gpu is None:
        return result_factory(spec, minutes=wall, clock="unavailable: cupti-python is not installed")
    return result_factory(spec, minutes=wall, gpu_minutes_per_1000_samples=gpu, busy_pct=gpu / wall * 100,
                          clock="cupti-python 13.0.1")


def test_a_host_bound_batch_size_looks_faster_in_wall_time_only(result_factory, lora, results_of, sections):
    # bs1 keeps its GPU busy 38% of the wall time: bs2 saves host time per sample, not GPU time.
    results = results_of(clocked(result_factory, lora(), 4.49, 1.70),
                         clocked(result_factory, lora(batch_size=2), 3.45, 1.85))
    notes = sections(markdown(results))
    assert notes["Wall time and GPU time disagree"] == (
        ["table", "rows", "wall change", "GPU change", "cause"],
        [["Batch Size", "qwen-7b-chat-bs1 → qwen-7b-chat-bs2", "4.49 → 3.45 (-23%)", "1.70 → 1.85 (+8.8%)",
          "host-bound: the step's wall time is mostly Python and kernel launches (GPU busy 38% in qwen-7b-chat-bs1)"]])
    assert [cells[1:3] for cells in notes["Within-table trend goes the other way"][1]] == [
        ["qwen-7b-chat-bs1 → qwen-7b-chat-bs2", "min"]]


def test_gpu_time_that_changes_while_wall_time_stays_within_1_percent_is_noted(
        result_factory, lora, results_of, sections):
    results = results_of(clocked(result_factory, lora(max_length=512), 4.03, 3.00),
                         clocked(result_factory, lora(max_length=1024), 4.01, 3.60))
    assert sections(markdown(results))["Wall time and GPU time disagree"][1] == [
        ["Max Length (LoRA)", "qwen-7b-chat-512 → qwen-7b-chat-1024", "4.03 → 4.01 (-0.5%)", "3.00 → 3.60 (+20%)",
         "not yet measured"]]  # both GPUs busy over half the time: no host-bound cause


def test_wall_time_that_changes_over_the_same_gpu_work_is_the_hosts(result_factory, lora, results_of, sections):
    # bs1 keeps its GPU busy 64% of the time, bs2 88%: neither host-bound, but the GPU work is the same.
    results = results_of(clocked(result_factory, lora(), 4.75, 3.05), clocked(result_factory, lora(batch_size=2), 3.62, 3.06))
    [[*_, cause]] = sections(markdown(results))["Wall time and GPU time disagree"][1]
    assert cause.startswith("the same GPU work (GPU time within 1%): the wall-time difference is host time")


@pytest.mark.parametrize("minutes_512, minutes_1024", [
    ((4.0, 3.0), (5.0, 3.9)),  # both clocks slower
    ((4.0, 3.0), (4.02, 2.99)),  # both within 1%, if opposite ways
    ((4.0, 3.0), (3.0, None)),  # no GPU clock for one row: nothing to compare
    ((4.0, None), (3.0, None)),  # results written before the GPU clock existed
])
def test_clocks_that_agree_or_are_missing_give_no_note(result_factory, lora, results_of, minutes_512, minutes_1024):
    results = results_of(clocked(result_factory, lora(max_length=512), *minutes_512),
                         clocked(result_factory, lora(max_length=1024), *minutes_1024))
    assert "### Wall time and GPU time disagree\n\nNone.\n" in markdown(results)
