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
