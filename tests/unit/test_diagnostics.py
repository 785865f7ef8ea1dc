"""sftbench.diagnostics: the allocator-trace replay behind the report's memory causes, a CPU profile run,
the memory-diagnostic format the report reads, and the commands' handling of an unknown row."""

import json
import subprocess
import sys

import pytest

from sftbench.diagnostics import memory_at_peak

from sftbench.diagnostics import step_profile


def frame(line: int, filename: str = "/src/sftbench/models/qwen.py") -> list[dict]:
    return [{"filename": "/site-packages/torch/nn/functional.py", "line": 1, "name": "linear"},
            {"filename": filename, "line": line, "name": "forward"}]


def test_peak_groups_are_the_blocks_alive_at_the_highest_point():
    events = [
        {"action": "alloc", "addr": 1, "size": 100, "frames": frame(10)},
        {"action": "alloc", "addr": 2, "size": 300, "frames": frame(20)},
        {"action": "alloc", "addr": 3, "size": 50, "frames": frame(10)},
        {"action": "free_completed", "addr": 2, "size": 300},  # peak was 450, just before this
        {"action": "free_completed", "addr": 99, "size": 40},  # a block from before the trace
        {"action": "alloc", "addr": 4, "size": 200, "frames": []},  # backward: no Python frames
    ]
    peak, groups = step_profile.peak_groups(events)
    assert peak == 450
    assert [(where.split(" (")[-1], size, count) for where, size, count in groups] == [
        ("qwen.py:20)", 300, 1), ("qwen.py:10)", 150, 2)]


def test_allocations_are_placed_at_the_innermost_frame_outside_torch():
    here = step_profile.__file__
    assert step_profile._where(frame(7, here)).endswith("(step_profile.py:7)")
    assert step_profile._where([]) == "in the backward pass"


def test_a_cpu_profile_writes_its_report_and_an_unknown_row_is_one_clear_error(tmp_path):
    row = "test_cpu_smoke[tiny-qwen-lora-sdpa]"
    run = subprocess.run([sys.executable, "-m", "sftbench", "profile", row, "--steps", "2", "--blocks", "1",
                          "--out", str(tmp_path)], capture_output=True, text=True, check=True)
    key = "tiny-qwen.lora.bf16.len512.bs1.gc.sdpa.r8-DEFAULT.cpu"
    report = json.loads((tmp_path / f"{key}.json").read_text())
    assert report["key"] == key and report["launch_floor_us"] > 0 and report["profile"]["cpu_ops"] > 0
    assert len(report["nvml_ab"]["off"]) == len(report["nvml_ab"]["on"]) == 1
    assert (tmp_path / f"{key}.profile.txt").stat().st_size > 0 and run.returncode == 0
    bad = subprocess.run([sys.executable, "-m", "sftbench", "profile", "test_x[nope]", "--out", str(tmp_path)],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "no catalog row 'test_x[nope]'" in bad.stderr and "Traceback" not in bad.stderr


def test_projection_names_an_unknown_row(tmp_path):
    bad = subprocess.run([sys.executable, "-m", "sftbench", "projection", "test_x[nope]", "--out", str(tmp_path)],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "no catalog row 'test_x[nope]'" in bad.stderr and "Traceback" not in bad.stderr


def test_memory_at_peak_reads_the_profiles_that_have_one(tmp_path):
    peak = {"batch_tokens": 8192, "allocated_before_mib": 100, "groups_mib": [["`x`", 5, 1]]}
    (tmp_path / "a.json").write_text(json.dumps({"key": "a", "memory_at_peak": peak}))
    (tmp_path / "b.json").write_text(json.dumps({"key": "b", "launch_floor_us": 7.0}))
    assert memory_at_peak(tmp_path) == {"a": peak}


def test_the_gpu_projection_is_replayed_on_a_traced_full_epochs_kernel_steps(result_factory):
    from sftbench.diagnostics.projection import markdown_table, replay_quick_gpu

    tokens = [2048, 1024, 0, 512, 2048, 0]  # micro-steps and optimizer steps (0 tokens) as a full epoch traces them
    full = result_factory(kernel_step_tokens=tokens, kernel_step_s=[t * 1e-4 for t in tokens], optimizer_kernel_s=0.5,
                          epoch_optimizer_steps=2)
    # Every micro-step is replayed here (count 4 >= 4 micro-steps): the projection is the epoch's own kernel time.
    assert replay_quick_gpu(full, 4) == pytest.approx((0.2048 * 2 + 0.1024 + 0.0512 + 2 * 0.5) / 60 * 1000 / 1000)
    row = {"row": "r", "settle": 4, "steps": 32, "quick_min": 4.0, "full_min": 4.0, "delta_pct": 0.0,
           "replayed_min": 4.0, "quick_gpu_min": 1.01, "full_gpu_min": 1.0, "gpu_delta_pct": 1.0, "replayed_gpu_min": 1.0}
    assert markdown_table([row]).splitlines()[-1].endswith("| 1.010 | 1.000 | +1.0% | 1.000 (+0.0%) |")
