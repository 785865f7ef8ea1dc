"""sftbench.runner on recorded results (no case runs): outcomes, the can-run rule, what is refused before training."""

from pathlib import Path

import pytest

from sftbench import environment, render
from sftbench.catalog import Row
from sftbench.runner import RunConfig, Runner, RunRefused, cannot_run
from sftbench.spec import CaseSpec
from sftbench.storage import locks
from sftbench.verdicts import Tolerances

from .conftest import ReplayLauncher

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
    assert not list(tmp_path.rglob("*.json")) and [o.status for o in runner.outcomes] == ["refused"]


def test_update_writes_the_configurations_baseline_once(tmp_path, monkeypatch, result_factory):
    runner = make_runner(tmp_path, monkeypatch, update_baselines=True)
    runner.results[ROW.spec] = result_factory()
    first, second = runner.check(ROW), runner.check(ROW)
    assert [p.name for p in tmp_path.rglob("*.json")] == [f"{ROW.spec.key}.json"]
    assert first.action == second.action == "pass" and first.status == "baseline written"
    assert runner.baselines_written == [tmp_path / "nvidia-h200" / f"{ROW.spec.key}.json"]
    assert first.message == second.message == f"baseline written: {tmp_path / 'nvidia-h200' / ROW.spec.key}.json"


def test_a_gpu_model_without_baselines_is_judged_on_memory_against_another_of_its_compute_capability(
        tmp_path, monkeypatch, result_factory):
    writer = make_runner(tmp_path, monkeypatch, update_baselines=True)
    writer.results[ROW.spec] = result_factory(allocated=900.0)
    writer.check(ROW)
    h100 = make_runner(tmp_path, monkeypatch)
    monkeypatch.setattr(Runner, "gpu", "NVIDIA H100 80GB HBM3")
    h100.results[ROW.spec] = result_factory(gpu="NVIDIA H100 80GB HBM3", allocated=950.0, minutes=30.0)
    outcome = h100.check(ROW)
    assert (outcome.action, outcome.verdict.kinds) == ("fail", ["memory"])  # allocated +5.6%; speed not compared
    assert "memory only, against a baseline of NVIDIA H200 (compute capability 9.0" in outcome.message


def test_compare_outcomes_fail_regressions_and_skip_mismatches(tmp_path, monkeypatch, result_factory):
    writer = make_runner(tmp_path, monkeypatch, update_baselines=True)
    writer.results[ROW.spec] = result_factory(minutes=10.0)
    writer.check(ROW)
    slower = make_runner(tmp_path, monkeypatch)
    slower.results[ROW.spec] = result_factory(minutes=16.0)
    slower._launcher = ReplayLauncher(result_factory(minutes=17.0))  # measured once more: slower again
    outcome = slower.check(ROW)
    assert (outcome.action, outcome.status, outcome.verdict.kinds) == ("fail", "regression", ["wall-time"])
    assert "minutes_per_1000_samples: 10 -> 17 (+70.0%, noise band 50%)" in outcome.message
    assert "wall time alone was worse (+60.0% against the 50% band); measured once more, in a fresh process, it " \
           "was worse again" in outcome.message
    other_kernel = make_runner(tmp_path, monkeypatch)
    other_kernel.results[ROW.spec] = result_factory(attention="sdpa")
    assert (other_kernel.check(ROW).action, other_kernel.check(ROW).status) == ("skip", "not-comparable")
    strict = make_runner(tmp_path, monkeypatch, strict=True)
    strict.results[ROW.spec] = result_factory(attention="sdpa")
    assert strict.check(ROW).action == "fail" and "--sftbench-strict" in strict.check(ROW).message


def test_wall_time_alone_regressed_is_measured_once_more_and_judged_on_the_second(tmp_path, monkeypatch,
                                                                                  result_factory):
    writer = make_runner(tmp_path, monkeypatch, update_baselines=True)
    writer.results[ROW.spec] = result_factory(minutes=10.0, gpu_minutes_per_1000_samples=8.0, host_probe_s=[0.008])
    writer.check(ROW)
    runner = make_runner(tmp_path, monkeypatch)
    # Host-side: GPU time flat, the host's own pace 25% slower.
    first = result_factory(minutes=16.0, gpu_minutes_per_1000_samples=8.0, host_probe_s=[0.010])
    runner.results[ROW.spec] = first
    again = result_factory(minutes=10.4, gpu_minutes_per_1000_samples=8.0, busy_pct=77.0)
    runner._launcher = ReplayLauncher(again)
    same_configuration = Row(table="batch_size", id="qwen-7b-chat-bs1", spec=ROW.spec)
    outcome, other = runner.check(ROW), runner.check(same_configuration)
    assert runner._launcher.ran == [ROW.spec]  # once more, for the configuration, not per row
    assert (outcome.action, outcome.status, outcome.result) == ("pass", "pass", again)
    assert (other.action, other.result) == ("pass", again)
    [note] = [n for n in outcome.verdict.notes if n.code == "re-measured"]
    assert (note.detail["change_pct"], note.detail["threshold_pct"], note.detail["confirmed"]) == (60.0, 50.0, False)
    assert render.message(outcome.verdict, ROW.node_id).splitlines()[1] == (
        "  wall time alone was worse (+60.0% against the 50% band, the host's own pace +25.0%) in a first "
        "measurement, not in a second, in a fresh process: the verdict is the second's")
    kernel = make_runner(tmp_path, monkeypatch)  # a regression with a kernel finding fails on its one measurement
    kernel.results[ROW.spec] = result_factory(minutes=16.0, gpu_minutes_per_1000_samples=9.0)
    kernel._launcher = ReplayLauncher()
    assert kernel.check(ROW).verdict.kinds == ["kernel", "host-side"] and kernel._launcher.ran == []
    crashed = make_runner(tmp_path, monkeypatch)  # the second case could not run: the row fails, never passes
    crashed.results[ROW.spec] = first
    crashed._launcher = ReplayLauncher(result_factory(outcome="error", message="RuntimeError: boom"))
    crash = crashed.check(ROW)
    assert (crash.action, crash.status, crash.message) == (
        "fail", "error", f"{ROW.node_id} could not run again: RuntimeError: boom")
    once = make_runner(tmp_path, monkeypatch, remeasure=False)  # --sftbench-no-remeasure
    once.results[ROW.spec], once._launcher = first, ReplayLauncher()
    assert once.check(ROW).status == "regression" and once._launcher.ran == []


def test_the_runs_clock_limited_gpu_tolerance_reaches_the_comparison(tmp_path, monkeypatch, result_factory):
    writer = make_runner(tmp_path, monkeypatch, update_baselines=True)
    writer.results[ROW.spec] = result_factory(gpu_minutes_per_1000_samples=8.0, clock_limits={})
    writer.check(ROW)
    limited = result_factory(gpu_minutes_per_1000_samples=8.4, clock_limits={"power cap": 1})
    for tolerance, verdict in ((Tolerances(limited_gpu_time_pct=6.0), "pass"), (Tolerances(limited_gpu_time_pct=3.0),
                                                                                 "regression")):
        runner = make_runner(tmp_path, monkeypatch, tolerances=tolerance)
        runner.results[ROW.spec] = limited
        assert runner.check(ROW).status == verdict


def test_an_error_result_fails_its_row(tmp_path, monkeypatch, result_factory):
    runner = make_runner(tmp_path, monkeypatch)
    runner.results[ROW.spec] = result_factory(outcome="error", message="RuntimeError: boom")
    outcome = runner.check(ROW)
    assert (outcome.action, outcome.status) == ("fail", "error") and "could not run: RuntimeError: boom" in outcome.message
    assert runner.outcomes == [outcome]  # the run's record names it


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


@pytest.mark.parametrize("name, value, problem", [
    ("SFTBENCH_INJECT_KERNELS", "foo:10", "SFTBENCH_INJECT_KERNELS='foo:10': the target is one of attention, gemm"),
    ("SFTBENCH_INJECT_KERNELS", "gemm:x", "SFTBENCH_INJECT_KERNELS='gemm:x': the percentage is not a number"),
    ("SFTBENCH_INJECT_GPU_PCT", "soon", "SFTBENCH_INJECT_GPU_PCT='soon' is not a number"),
    ("SFTBENCH_FAULT", "nonsense", "SFTBENCH_FAULT='nonsense': the kind is one of raise, exit"),
])
def test_a_bad_knob_is_refused_in_one_line_before_any_model_is_built(tmp_path, monkeypatch, name, value, problem):
    monkeypatch.setenv(name, value)
    runner = make_runner(tmp_path, monkeypatch)
    with pytest.raises(RunRefused) as error:
        runner.prepare()
    assert str(error.value).startswith(f"sftbench: {problem}") and str(error.value).endswith("nothing was trained")
    assert "\n" not in str(error.value) and runner._launcher is None


def test_require_baseline_fails_a_configuration_without_one_naming_the_file(tmp_path, monkeypatch, result_factory):
    runner = make_runner(tmp_path, monkeypatch, require_baseline=True)
    runner.results[ROW.spec] = result_factory()
    outcome = runner.check(ROW)
    assert (outcome.action, outcome.status) == ("fail", "no-baseline")
    assert outcome.message == (f"{ROW.node_id}: no baseline {tmp_path / 'nvidia-h200' / ROW.spec.key}.json "
                               "(--sftbench-require-baseline)")


@pytest.mark.parametrize("update", [True, False])
def test_a_second_run_writing_the_same_folders_is_refused_whatever_its_shard_or_temporary_folder(
        tmp_path, monkeypatch, update):
    results = tmp_path / "results"
    first = Runner(RunConfig(baselines_dir=tmp_path / "baselines", results_dir=results, update_baselines=update),
                   log=lambda line: None)
    monkeypatch.setattr(Runner, "gpu", "NVIDIA H200")
    (tmp_path / "baselines").mkdir()
    first.prepare()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "elsewhere"))
    second = Runner(RunConfig(baselines_dir=tmp_path / "baselines", results_dir=tmp_path / "other-results",
                              update_baselines=True, shard="1/1"), log=lambda line: None)
    if update:  # the baselines folder is held by the first run
        with pytest.raises(RunRefused, match=r"another sftbench run is writing .*baselines: wait for it to finish"):
            second.prepare()
    third = Runner(RunConfig(baselines_dir=tmp_path / "baselines", results_dir=results), log=lambda line: None)
    with pytest.raises(RunRefused, match=f"another sftbench run is writing {results}"):
        third.prepare()
    first.close()
    Runner(RunConfig(baselines_dir=tmp_path / "baselines", results_dir=results), log=lambda line: None).prepare()
    assert locks.LOCK_NAME in {p.name for p in results.iterdir()}


def test_the_workers_of_one_run_share_its_folders_and_another_runs_are_refused(tmp_path):
    results = tmp_path / "results"
    (tmp_path / "baselines").mkdir()

    def worker(name, run):
        return Runner(RunConfig(baselines_dir=tmp_path / "baselines", results_dir=results, worker=name, run_id=run),
                      log=lambda line: None)

    first = worker("gw0", "run-a")
    first.prepare()
    worker("gw1", "run-a").prepare()  # not refused: a worker of the same run holds the folder
    with pytest.raises(RunRefused, match=f"another sftbench run is writing {results}"):
        worker("gw0", "run-b").prepare()
    first.close()


def test_a_run_says_once_that_it_replaces_results_of_earlier_runs(tmp_path, result_factory):
    from sftbench.storage.results import ResultStore

    ResultStore(tmp_path / "results").write(result_factory())
    (tmp_path / "baselines").mkdir()
    lines = []
    runner = Runner(RunConfig(baselines_dir=tmp_path / "baselines", results_dir=tmp_path / "results"), log=lines.append)
    runner.prepare()
    runner.close()
    assert lines == [(f"sftbench: {tmp_path / 'results'} holds 1 results of earlier runs; this run replaces those of "
                      "the configurations it trains")]


def test_the_commit_is_that_of_the_code_that_ran_wherever_the_baselines_are(tmp_path, monkeypatch):
    from sftbench import runner as runner_module

    monkeypatch.delenv("SFTBENCH_COMMIT", raising=False)
    monkeypatch.chdir(tmp_path)  # outside any repository, as --sftbench-baselines may be
    commit = runner_module.commit()
    assert commit and commit == environment.git_commit(Path(runner_module.__file__).parent)
