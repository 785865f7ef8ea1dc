"""sftbench.case: one case in this process on the CPU (build, prepare, train, measure), and its failures."""

import os
import subprocess
import sys

import torch

from sftbench import case
from sftbench.spec import QUANTIZATIONS, CaseSpec, RunOptions
from sftbench.trainer import FAMILY_REPEATS

SPEC = CaseSpec("tiny-qwen", device="cpu", attention="sdpa", max_length=64, samples=6, gradient_checkpointing=False)


def test_a_cpu_case_records_its_model_timing_and_that_it_has_no_gpu_clock():
    result = case.run_case(SPEC, RunOptions(representative_steps=4), log=lambda line: None)
    assert result.outcome == "ok" and result.mode == "quick" and result.attention == "sdpa"
    assert result.model_shape == {"vocab_size": 1000, "hidden_size": 64, "num_layers": 2}
    assert result.kernels.clock == "unavailable: no GPU kernel clock on the CPU"
    assert result.kernels.gpu_minutes_per_1000_samples is None and result.kernels.steps == []
    assert len(result.timing.step_durations_s) == 4 + 2 * FAMILY_REPEATS and result.timing.minutes_per_1000_samples > 0
    assert result.timing.wall_noise_pct >= 0  # from the two halves of the 4 steps
    assert result.trainable_params > 0 and result.quantization_backend is None
    assert {"build_s", "prepare_s", "setup_s", "warmup_s", "case_s", "kernel_read_s", "timed_steps_s"} <= set(result.overhead)


def test_a_bad_self_test_knob_is_the_cases_error_not_a_crash(monkeypatch):
    monkeypatch.setenv("SFTBENCH_INJECT_HOST_MS", "soon")
    result = case.run_case(SPEC, RunOptions(representative_steps=4), log=lambda line: None)
    assert result.outcome == "error" and "SFTBENCH_INJECT_HOST_MS='soon' is not a number" in result.message


def test_an_out_of_memory_error_is_an_outcome_with_its_first_line(monkeypatch):
    def build(*args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")

    monkeypatch.setattr(case, "build_case_model", build)
    result = case.run_case(SPEC, RunOptions(), log=lambda line: None)
    assert (result.outcome, result.message) == ("oom", "CUDA out of memory. Tried to allocate 2.00 GiB")


def test_a_case_never_hides_the_library_its_quantization_uses():
    assert set(case.UNUSED_LIBRARIES) == set(QUANTIZATIONS)
    assert "bitsandbytes" not in case.UNUSED_LIBRARIES["int4-bnb"]
    assert "gptqmodel" not in case.UNUSED_LIBRARIES["int4-gptq"] + case.UNUSED_LIBRARIES["int8-gptq"]


def test_a_hidden_library_looks_uninstalled_to_find_spec_and_import(tmp_path):
    # A module of our own: any installed one may already be imported by sftbench.case's imports (transformers
    # 5.25 imports tomllib), and hiding leaves an imported module alone.
    (tmp_path / "sftbench_probe_library.py").write_text("")
    code = ("import importlib.util, sys; from sftbench.case import hide_libraries;"
            "assert importlib.util.find_spec('sftbench_probe_library') is not None;"
            "hide_libraries(['sftbench_probe_library']);"
            "assert importlib.util.find_spec('sftbench_probe_library') is None\n"
            "try:\n    import sftbench_probe_library\nexcept ImportError:\n    print('hidden')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])})
    assert done.stdout.strip() == "hidden", done.stderr
