"""sftbench.runner on recorded results (no case runs): outcomes, the result store, the can-run rule."""

import json

import pytest

from sftbench import environment
from sftbench.baselines import Tolerances
from sftbench.catalog import Row
from sftbench.runner import ResultStore, RunConfig, Runner, RunRefused, cannot_run
from sftbench.spec import CaseSpec

ROW = Row(table="lora_max_length", id="qwen-7b-chat-4096", spec=CaseSpec("qwen-7b-chat", max_length=4096))


def make_runner(tmp_path, monkeypatch, **config) -> Runner:
    runner = Runner(RunConfig(baselines_dir=tmp_path, results_dir=None, **config), log=lambda line: None)
    monkeypatch.setattr(runner, "skip_reason", lambda spec: None)  # as on a GPU machine with flash-attn
    monkeypatch.setattr(Runner, "gpu", "NVIDIA H200")
    return runner


def test_a_fallback_kernels_numbers_never_become_the_rows_baseline(tmp_path, monkeypatch, result_factory):
    runner = make_runner(tmp_path, monkeypatch, update_baselines=True)
    runner.results[ROW.spec] = result_factory(attention="sdpa")  # ran with --sftbench-attn-fallback sdpa
    outcome = runner.check(ROW)
    assert outcome.action == "fail" and "ran sdpa (--sftbench-attn-fallback) for a row measured with " \
        "flash_attention_2" in outcome.message
    assert not list(tmp_path.rglob("*.json")) and not runner.outcomes


def test_update_writes_the_configurations_baseline_once(tmp_path, monkeypatch, result_factory):
    runner = make_runner(tmp_path, monkeypatch, update_baselines=True)
    runner.results[ROW.spec] = result_factory()
    first, second = runner.check(ROW), runner.check(ROW)
    assert [p.name for p in tmp_path.rglob("*.json")] == [f"{ROW.spec.key}.json"]
    assert first.action == second.action == "pass" and first.verdict == "baseline written"
    assert first.message == second.message == f"baseline written: {tmp_path / 'nvidia-h200' / ROW.spec.key}.json"


def test_compare_outcomes_fail_regressions_and_skip_mismatches(tmp_path, monkeypatch, result_factory):
    writer = make_runner(tmp_path, monkeypatch, update_baselines=True)
    writer.results[ROW.spec] = result_factory(minutes=10.0)
    writer.check(ROW)
    slower = make_runner(tmp_path, monkeypatch)
    slower.results[ROW.spec] = result_factory(minutes=13.0)
    outcome = slower.check(ROW)
    assert (outcome.action, outcome.verdict) == ("fail", "regression")
    assert "minutes_per_1000_samples: 10 -> 13 (+30.0%, noise band 20%)" in outcome.message
    other_kernel = make_runner(tmp_path, monkeypatch)
    other_kernel.results[ROW.spec] = result_factory(attention="sdpa")
    assert (other_kernel.check(ROW).action, other_kernel.check(ROW).verdict) == ("skip", "not-comparable")
    strict = make_runner(tmp_path, monkeypatch, strict=True)
    strict.results[ROW.spec] = result_factory(attention="sdpa")
    assert strict.check(ROW).action == "fail" and "--sftbench-strict" in strict.check(ROW).message


def test_the_runs_clock_limited_gpu_tolerance_reaches_the_comparison(tmp_path, monkeypatch, result_factory):
    writer = make_runner(tmp_path, monkeypatch, update_baselines=True)
    writer.results[ROW.spec] = result_factory(gpu_minutes_per_1000_samples=8.0, kernel_clock_limits={})
    writer.check(ROW)
    limited = result_factory(gpu_minutes_per_1000_samples=8.4, kernel_clock_limits={"power cap": 1})
    for tolerance, verdict in ((Tolerances(limited_gpu_time_pct=6.0), "pass"), (Tolerances(limited_gpu_time_pct=3.0),
                                                                                 "regression")):
        runner = make_runner(tmp_path, monkeypatch, tolerances=tolerance)
        runner.results[ROW.spec] = limited
        assert runner.check(ROW).verdict == verdict


def test_an_error_result_fails_its_row_and_is_left_out_of_the_summary(tmp_path, monkeypatch, result_factory):
    runner = make_runner(tmp_path, monkeypatch)
    runner.results[ROW.spec] = result_factory(outcome="error", message="RuntimeError: boom")
    outcome = runner.check(ROW)
    assert (outcome.action, outcome.verdict) == ("fail", "error") and "could not run: RuntimeError: boom" in outcome.message
    assert runner.summary_lines(skipped=2) == ["2 skipped"]


def test_a_row_that_cannot_run_is_skipped_with_its_reason(tmp_path, monkeypatch):
    runner = make_runner(tmp_path, monkeypatch)
    monkeypatch.setattr(runner, "skip_reason", lambda spec: "no CUDA GPU here")
    outcome = runner.check(ROW)
    assert (outcome.action, outcome.message, outcome.result) == ("skip", "no CUDA GPU here", None)


def test_cannot_run_names_what_to_install(monkeypatch):
    monkeypatch.setattr(environment, "gpu_info", lambda: {"gpu": "NVIDIA H200"})
    monkeypatch.setattr(environment, "flash_attn_installed", lambda: False)
    assert cannot_run(ROW.spec, None) == ("flash-attn is not installed: pip install 'sftbench[flash]', "
                                          "or run with --sftbench-attn-fallback sdpa")
    assert cannot_run(ROW.spec, "sdpa") is None
    monkeypatch.setattr(environment, "gpu_info", lambda: {"gpu": "cpu"})
    assert cannot_run(ROW.spec, "sdpa").startswith("no CUDA GPU here")


def test_the_result_store_keeps_every_result_of_a_configuration(tmp_path, result_factory):
    store = ResultStore(tmp_path)
    paths = [store.write(result_factory(minutes=minutes)) for minutes in (10.0, 11.0, 12.0)]
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == [
        f"nvidia-h200/{ROW.spec.key}.json", f"nvidia-h200/{ROW.spec.key}.2.json", f"nvidia-h200/{ROW.spec.key}.3.json"]
    assert [json.loads(p.read_text())["minutes_per_1000_samples"] for p in paths] == [10.0, 11.0, 12.0]


def test_the_run_record_keeps_each_configurations_verdict_beside_its_baseline(tmp_path, monkeypatch, result_factory):
    writer = make_runner(tmp_path / "baselines", monkeypatch, update_baselines=True)
    writer.results[ROW.spec] = result_factory(minutes=10.0)
    writer.check(ROW)
    runner = Runner(RunConfig(baselines_dir=tmp_path / "baselines", results_dir=tmp_path / "results"),
                    log=lambda line: None)
    monkeypatch.setattr(runner, "skip_reason", lambda spec: None)
    runner.results[ROW.spec] = result_factory(minutes=13.0)
    runner.results[ROW.spec].machine["gpu_uuid"] = "GPU-1234"
    runner.check(ROW)
    path = runner.write_record()
    record = json.loads(path.read_text())
    assert path.parent == tmp_path / "results" / "history" and record["update_baselines"] is False
    [configuration] = record["configurations"]
    assert configuration["rows"] == [ROW.node_id] and configuration["label"] == "wall-time regression"
    assert configuration["gpu_uuid"] == "GPU-1234"  # under pytest-xdist each configuration names its own GPU
    assert (configuration["baseline"]["minutes_per_1000_samples"], configuration["now"]["minutes_per_1000_samples"]) \
        == (10.0, 13.0)
    assert {"gpu", "driver", "versions", "commit", "settings"} <= set(record) and record["started"] <= record["finished"]


def test_a_run_with_self_test_knobs_never_becomes_a_baseline(tmp_path, monkeypatch, result_factory):
    runner = make_runner(tmp_path, monkeypatch, update_baselines=True)
    result = result_factory()
    result.machine["settings"] = {"SFTBENCH_INJECT_GPU_PCT": "5"}
    runner.results[ROW.spec] = result
    outcome = runner.check(ROW)
    assert outcome.action == "fail" and "self-test knob(s) SFTBENCH_INJECT_GPU_PCT" in outcome.message
    assert not list(tmp_path.rglob("*.json"))


def test_an_update_run_with_a_self_test_knob_set_is_refused_before_anything_trains(tmp_path, monkeypatch):
    monkeypatch.setenv("SFTBENCH_INJECT_HOST_MS", "60")
    runner = make_runner(tmp_path, monkeypatch, update_baselines=True)
    with pytest.raises(RunRefused, match=r"--sftbench-update-baselines with the self-test knob\(s\) "
                                         r"SFTBENCH_INJECT_HOST_MS set: .*nothing was trained"):
        runner.check(ROW)
    assert runner._launcher is None and not list(tmp_path.rglob("*"))


def test_require_baseline_fails_a_configuration_without_one_naming_the_file(tmp_path, monkeypatch, result_factory):
    runner = make_runner(tmp_path, monkeypatch, require_baseline=True)
    runner.results[ROW.spec] = result_factory()
    outcome = runner.check(ROW)
    assert (outcome.action, outcome.verdict) == ("fail", "no-baseline")
    assert outcome.message == (f"{ROW.node_id}: no baseline {tmp_path / 'nvidia-h200' / ROW.spec.key}.json "
                               "(--sftbench-require-baseline)")


def test_a_merged_part_joins_the_summary_and_the_run_record(tmp_path, monkeypatch, result_factory):
    other = Row(table="lora_max_length", id="qwen-7b-chat-2048", spec=CaseSpec("qwen-7b-chat", max_length=2048))
    worker = make_runner(tmp_path / "baselines", monkeypatch)
    worker.results[other.spec] = result_factory(other.spec)
    worker.check(other)
    part = json.loads(json.dumps(worker.part()))  # plain data, as pytest-xdist carries it
    whole = Runner(RunConfig(baselines_dir=tmp_path / "baselines", results_dir=tmp_path / "results"),
                   log=lambda line: None)
    monkeypatch.setattr(whole, "skip_reason", lambda spec: None)
    whole.results[ROW.spec] = result_factory()
    whole.check(ROW)
    alone = whole.summary_lines(skipped=2)
    whole.merge(part)
    lines = whole.summary_lines(skipped=2)
    assert lines[:-1] == alone[:-1] + worker.summary_lines()[:-1] and lines[-1] == "2 no-baseline, 2 skipped"
    record = json.loads(whole.write_record().read_text())
    assert [c["rows"] for c in record["configurations"]] == [[ROW.node_id], [other.node_id]]


def test_the_summary_counts_configurations_whose_wall_time_was_not_judged(tmp_path, monkeypatch, result_factory):
    other = Row(table="lora_max_length", id="qwen-7b-chat-2048", spec=CaseSpec("qwen-7b-chat", max_length=2048))
    writer = make_runner(tmp_path, monkeypatch, update_baselines=True)
    for row in (ROW, other):
        writer.results[row.spec] = result_factory(row.spec)
        writer.check(row)
    elsewhere = result_factory(other.spec)
    elsewhere.machine = {**elsewhere.machine, "host": ["GPU-another-host"]}
    worker = make_runner(tmp_path, monkeypatch)  # a pytest-xdist worker: its entries reach the controller as data
    worker.results[other.spec] = elsewhere
    worker.check(other)
    whole = make_runner(tmp_path, monkeypatch)
    whole.results[ROW.spec] = result_factory()
    whole.check(ROW)
    assert not any(line.startswith("wall time not judged") for line in whole.summary_lines())
    whole.merge(json.loads(json.dumps(worker.part())))
    assert whole.summary_lines()[-1] == (
        "wall time not judged in 1 of 2 configurations: their baselines ran on another host or do not name theirs "
        "(GPU time and memory judged them; baselines written on this host judge wall time too)")
