"""sftbench.injection: the self-test knobs read from the environment, and which a result ran with."""

import pytest

from sftbench import environment
from sftbench.injection import GPU_PCT, HOST_MS, MEMORY_PCT, Injection, injected


def test_knobs_are_read_from_the_environment():
    assert Injection.from_environ({}) == Injection()
    knobs = Injection.from_environ({GPU_PCT: "5", HOST_MS: " 40 ", MEMORY_PCT: "3"})
    assert knobs == Injection(gpu_pct=5.0, host_ms=40.0, memory_pct=3.0)


@pytest.mark.parametrize("value", ["abc", "-1", "nan"])
def test_a_bad_knob_is_one_clear_error(value):
    with pytest.raises(ValueError, match=rf"{GPU_PCT}='{value}'"):
        Injection.from_environ({GPU_PCT: value})


def test_knobs_are_recorded_among_the_settings_and_named_when_set(monkeypatch):
    monkeypatch.setenv(GPU_PCT, "5")
    assert environment.settings()[GPU_PCT] == "5"
    assert injected({GPU_PCT: "5", HOST_MS: "0", "CUDA_LAUNCH_BLOCKING": "1"}) == [GPU_PCT]
    assert injected({GPU_PCT: "0.0", HOST_MS: " ", MEMORY_PCT: "three"}) == [MEMORY_PCT]


def test_the_kernel_knob_names_a_target_and_a_percentage():
    from sftbench.injection import KERNELS

    assert Injection.from_environ({KERNELS: "attention:10"}) == Injection(kernels="attention", kernels_pct=10.0)
    assert injected({KERNELS: "gemm:5"}) == [KERNELS] and injected({KERNELS: "gemm:0"}) == []
    for value, message in (("softmax:10", "the target is one of attention, gemm"), ("gemm:x", "is not a number")):
        with pytest.raises(ValueError, match=message):
            Injection.from_environ({KERNELS: value})
    with pytest.raises(ValueError, match="cannot be set together"):
        Injection.from_environ({KERNELS: "gemm:5", GPU_PCT: "5"})


def test_the_injector_sizes_its_spins_from_traced_calibration_steps_it_then_discards(monkeypatch):
    import contextlib

    import torch

    from sftbench.injection import CALIBRATION_CYCLES, Injector
    from sftbench.result import Kernels, TracedStep

    class Timer:
        def __init__(self):
            self.record, self.pending, self.after_operator = Kernels(), [], None

        @contextlib.contextmanager
        def step(self, tokens):
            yield
            seconds = 0.02 if tokens == 0 else tokens * 1e-5  # the calibration spin: 20 ms
            self.pending.append(TracedStep(tokens=tokens, seconds=seconds, families={"GEMM": seconds},
                                           operators={"aten::mm": 10}))

        def collect(self, keep=True):
            steps, self.pending = self.pending, []
            self.record.steps += steps if keep else []
            return steps

    spins = []
    monkeypatch.setattr(torch.cuda, "_sleep", spins.append)
    timer, ran = Timer(), []
    batches = [type("Batch", (), {"tokens": t})() for t in (512, 2048)]
    injector = Injector(Injection(kernels="gemm", kernels_pct=10), timer, torch.device("cpu"))
    injector.prepare(ran.append, *batches)
    assert ran == batches and timer.record.steps == [] and spins == [CALIBRATION_CYCLES]  # calibration discarded
    injector.before_micro_step(2048)
    timer.after_operator("aten::mm")
    # 10% of 2048 tokens' GEMM seconds per aten::mm call (20.48 ms / 10 calls), at 1e9 cycles a second
    assert spins[1] == round(0.1 * 0.02048 / 10 * 1e9)
    with pytest.raises(RuntimeError, match="need the GPU kernel clock"):
        Injector(Injection(gpu_pct=5), None, torch.device("cpu"))


def test_the_memory_knob_names_a_category_and_a_percentage():
    from sftbench.injection import MEMORY_IN

    assert Injection.from_environ({MEMORY_IN: "optimizer:3"}) == Injection(memory_in="optimizer", memory_in_pct=3.0)
    assert injected({MEMORY_IN: "frozen:3"}) == [MEMORY_IN] and injected({MEMORY_IN: "frozen:0"}) == []
    for value, message in (("gradients:3", "the target is one of activations, optimizer, frozen"),
                           ("frozen:x", "is not a number"), ("frozen:-1", "must be >= 0")):
        with pytest.raises(ValueError, match=message):
            Injection.from_environ({MEMORY_IN: value})
    with pytest.raises(ValueError, match="cannot be set together: both add memory"):
        Injection.from_environ({MEMORY_IN: "frozen:3", MEMORY_PCT: "3"})


@pytest.mark.parametrize("target, category", [("activations", "activations and temporaries"),
                                              ("optimizer", "optimizer states"), ("frozen", "frozen parameters")])
def test_the_memory_knob_grows_its_category_only(target, category):
    """On the CPU (prepare sizes the bytes from the GPU's allocated peak): where they go, and that
    sftbench.memory finds them in the knob's category."""
    import torch

    from sftbench import memory
    from sftbench.injection import MEMORY_TARGETS, Injector

    model = torch.nn.Linear(64, 64)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(2, 64)).sum().backward()
    optimizer.step()
    injector = Injector(Injection(memory_in=target, memory_in_pct=3.0), None, torch.device("cpu"))
    injector._grow(3000, model, optimizer)
    injector.before_micro_step(64)
    if target == "activations":
        grown = [injector._temporary]
    elif target == "optimizer":
        grown = [state["sftbench_injected"] for state in optimizer.state.values()]
    else:
        grown = [model.sftbench_injected_frozen]
    assert sum(t.numel() for t in grown) == pytest.approx(3000, abs=2)
    owned = memory.owners(model, optimizer)
    assert {owned.get(t.untyped_storage().data_ptr(), memory.ACTIVATIONS) for t in grown} == {category}
    assert MEMORY_TARGETS[target] == category
    injector.after_optimizer_step()
    assert injector._temporary is None
