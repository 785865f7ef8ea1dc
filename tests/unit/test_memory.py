"""sftbench.memory: the allocator record replayed to the blocks alive at its peak, and those sorted by category."""

import pytest
import torch

from sftbench import memory
from sftbench.memory import (
    ACTIVATIONS,
    FROZEN,
    GRADIENTS,
    HELD_BEFORE,
    MIB,
    OPTIMIZER,
    TRAINABLE,
)

QWEN = "/src/sftbench/models/qwen.py"


def frame(line: int, filename: str = QWEN) -> list[dict]:
    return [{"filename": "/site-packages/torch/nn/functional.py", "line": 1, "name": "linear"},
            {"filename": filename, "line": line, "name": "forward"}]


# A weight from before the record (alive at its end), a gradient freed during it, and three activations.
EVENTS = [
    {"action": "alloc", "addr": 1, "size": 100 * MIB, "frames": frame(10)},
    {"action": "segment_alloc", "addr": 1000, "size": 512 * MIB},
    {"action": "alloc", "addr": 2, "size": 300 * MIB, "frames": frame(20)},
    {"action": "alloc", "addr": 3, "size": 50 * MIB, "frames": frame(10)},
    {"action": "free_completed", "addr": 2, "size": 300 * MIB},  # the peak was just before this
    {"action": "free_completed", "addr": 99, "size": 40 * MIB},  # the gradient, allocated before the record
    {"action": "alloc", "addr": 4, "size": 200 * MIB, "frames": []},  # backward: no Python frames
]
IN_USE_AT_END = [{"address": 50, "size": 1000 * MIB, "state": "active_allocated"},
                 {"address": 1, "size": 100 * MIB, "state": "active_allocated"}]


def test_the_blocks_alive_at_the_peak_include_those_held_from_before_the_record():
    blocks, peak, reserved = memory.live_at_peak(EVENTS, IN_USE_AT_END)
    assert (peak, reserved) == (450 * MIB, 512 * MIB)  # above the start
    assert sorted((b.address, b.size // MIB) for b in blocks) == [(1, 100), (2, 300), (3, 50), (50, 1000), (99, 40)]
    assert {b.address for b in blocks if b.where == HELD_BEFORE} == {50, 99}
    groups = memory.by_site([b for b in blocks if b.where != HELD_BEFORE])
    assert [(where.split(" (")[-1], size // MIB, count) for where, size, count in groups] == [
        ("qwen.py:20)", 300, 1), ("qwen.py:10)", 150, 2)]


def test_the_categories_add_up_to_the_allocated_peak_and_name_where_the_rest_was_allocated():
    blocks, _, _ = memory.live_at_peak(EVENTS, IN_USE_AT_END)
    found = memory.categorize(blocks, {50: TRAINABLE, 99: GRADIENTS}, reserved_mib=2000.0)
    assert (found.trainable_parameters_mib, found.gradients_mib, found.activations_mib) == (1000, 40, 450)
    assert (found.frozen_parameters_mib, found.optimizer_states_mib) == (0, 0)
    assert found.peak_mib == 1490 and found.slack_mib == 510
    assert [(g.where.split(" (")[-1], g.mib, g.blocks) for g in found.groups] == [("qwen.py:20)", 300, 1),
                                                                                 ("qwen.py:10)", 150, 2)]


def test_a_record_that_only_frees_peaks_at_its_start():
    blocks, peak, _ = memory.live_at_peak([{"action": "free_completed", "addr": 9, "size": MIB}], [])
    assert peak == 0 and [(b.address, b.where) for b in blocks] == [(9, HELD_BEFORE)]


def test_owners_are_the_parameters_gradients_buffers_quantization_state_and_optimizer_states():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    model[1].weight.requires_grad_(False)
    model.register_buffer("inv_freq", torch.ones(2))
    model[0].bias.quant_state = type("QuantState", (), {})()  # bitsandbytes' scales hang off the weight
    model[0].bias.quant_state.absmax = torch.ones(3)
    model[0].bias.quant_state.state2 = type("QuantState", (), {"__init__": lambda self: None})()
    model[0].bias.quant_state.state2.absmax = torch.ones(5)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    model(torch.ones(2, 4)).sum().backward()
    optimizer.step()
    owned = memory.owners(model, optimizer)

    def of(tensor):
        return owned[tensor.untyped_storage().data_ptr()]

    assert of(model[0].weight) == TRAINABLE and of(model[1].weight) == FROZEN and of(model.inv_freq) == FROZEN
    assert of(model[0].weight.grad) == GRADIENTS
    assert {of(t) for t in (model[0].bias.quant_state.absmax, model[0].bias.quant_state.state2.absmax)} == {FROZEN}
    assert {of(t) for state in optimizer.state.values() for t in state.values() if t.numel()} == {OPTIMIZER}
    assert ACTIVATIONS not in owned.values()


@pytest.mark.parametrize("frames, site", [
    (frame(7, memory.__file__), "(memory.py:7)"),  # the innermost frame outside torch, with its line
    ([{"filename": "/site-packages/torch/utils/checkpoint.py", "line": 3, "name": "forward"}], "(checkpoint.py:3)"),
    ([], "in the backward pass"),  # autograd's thread has no Python frames
])
def test_allocations_are_placed_at_the_innermost_frame_outside_torch(frames, site):
    assert memory.allocation_site(frames).endswith(site)


@pytest.mark.parametrize("peaks, need", [
    ({"max_allocated_mib": 73712.0, "max_reserved_mib": 88080.0, "nvml_peak_mib": 89460.0}, 75092.0),
    ({"max_allocated_mib": 100.0, "max_reserved_mib": 200.0, "nvml_peak_mib": 150.0}, 100.0),  # NVML sampled below
    ({"max_allocated_mib": 100.0, "max_reserved_mib": 200.0}, None),  # no NVML: not measured
])
def test_what_a_card_must_hold_is_the_allocated_peak_and_what_the_process_held_outside_the_allocator(peaks, need):
    from sftbench.result import MemoryPeaks

    assert MemoryPeaks(**peaks).card_need_mib == need


def test_categories_at_peak_records_a_step_with_gradients_present_and_sorts_what_it_held(monkeypatch):
    """The orchestration, on the CPU with the allocator's record faked: the step runs with gradients present, then
    the optimizer step; the record's blocks are sorted by the tensors the trainer held when it began."""
    from sftbench.case import case_trainer, prepare_for_training
    from sftbench.models import build_model
    from sftbench.spec import CaseSpec

    spec = CaseSpec("tiny-qwen", device="cpu", attention="sdpa", max_length=64, samples=4, gradient_checkpointing=False)
    trainer = case_trainer(spec, prepare_for_training(build_model(spec.model_type, attn_implementation="sdpa",
                                                                  device="cpu"), spec), torch.device("cpu"))
    batch = max(trainer.batches, key=lambda b: b.tokens)
    trainer.micro_step(batch)
    trainer.optimizer_step()  # AdamW's states exist, the gradients do not: categories_at_peak makes them first
    steps, record = [], {}

    def counted(name):
        run = getattr(trainer, name)

        def step(*args):
            steps.append(name)
            return run(*args)
        return step

    for name in ("micro_step", "optimizer_step"):
        monkeypatch.setattr(trainer, name, counted(name))

    def start_recording(enabled=None, **options):  # what the trainer holds as the record begins, with the sizes
        if enabled:
            tensors = [*trainer.model.parameters(), *trainer.model.buffers(), *(p.grad for p in trainer.params),
                       *(t for state in trainer.optimizer.state.values() for t in state.values())]
            record["held"] = memory.owners(trainer.model, trainer.optimizer)
            record["sizes"] = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}

    def snapshot():  # an activation allocated and freed, then zero_grad frees the gradients
        held, sizes = record["held"], record["sizes"]
        events = [{"action": "alloc", "addr": 1, "size": 64 * MIB, "frames": frame(5)},
                  {"action": "free_completed", "addr": 1, "size": 64 * MIB}]
        events += [{"action": "free_completed", "addr": a, "size": sizes[a]} for a, c in held.items() if c == GRADIENTS]
        return {"device_traces": [events], "segments": [{"blocks": [
            {"address": a, "size": sizes[a], "state": "active_allocated"} for a, c in held.items() if c != GRADIENTS]}]}

    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 512 * MIB)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda.memory, "_record_memory_history", start_recording)
    monkeypatch.setattr(torch.cuda.memory, "_snapshot", snapshot)
    found = memory.categories_at_peak(trainer, batch)
    assert steps == ["micro_step", "micro_step", "optimizer_step"]  # gradients first, then the recorded step
    assert set(record["held"].values()) == {TRAINABLE, FROZEN, GRADIENTS, OPTIMIZER}
    assert found.activations_mib == 64 and found.groups[0].where.endswith("(qwen.py:5)")
    assert found.gradients_mib > 0 and found.optimizer_states_mib > 0 and found.frozen_parameters_mib > 0
    assert found.peak_mib == pytest.approx(sum((found.trainable_parameters_mib, found.frozen_parameters_mib,
                                                found.gradients_mib, found.optimizer_states_mib, found.activations_mib)))
    assert found.slack_mib == pytest.approx(512 - found.peak_mib)
