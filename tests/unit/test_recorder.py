"""sftbench.recorder and the run summary: each configuration's verdict as data in the run record, pytest-xdist
parts merged, what the `sftbench` section says, and an interrupted run's record."""

import json

from sftbench.catalog import Row
from sftbench.recorder import Recorder
from sftbench.render import run_summary
from sftbench.runner import RunConfig, Runner
from sftbench.spec import CaseSpec
from sftbench.storage.records import read_record

from .conftest import ReplayLauncher

ROW = Row(table="lora_max_length", id="qwen-7b-chat-4096", spec=CaseSpec("qwen-7b-chat", max_length=4096))
OTHER = Row(table="lora_max_length", id="qwen-7b-chat-2048", spec=CaseSpec("qwen-7b-chat", max_length=2048))


def make_runner(tmp_path, monkeypatch, **config) -> Runner:
    runner = Runner(RunConfig(baselines_dir=tmp_path / "baselines", results_dir=tmp_path / "results", **config),
                    log=lambda line: None)
    monkeypatch.setattr(runner, "skip_reason", lambda spec: None)  # as on a GPU machine with flash-attn
    monkeypatch.setattr(Runner, "gpu", "NVIDIA H200")
    return runner


def checked(runner, result, row=ROW):
    runner.results[row.spec] = result
    runner.check(row)
    return runner


def test_the_run_record_keeps_each_configurations_verdict_as_data_beside_its_baseline(tmp_path, monkeypatch,
                                                                                     result_factory):
    checked(make_runner(tmp_path, monkeypatch, update_baselines=True), result_factory(minutes=10.0))
    slower = result_factory(minutes=16.0)
    slower.machine["gpu_uuid"] = "GPU-1234"
    # One measurement (measuring again is the runner's, tested there).
    recorder = Recorder(checked(make_runner(tmp_path, monkeypatch, remeasure=False), slower))
    path = recorder.write(recorder.record())
    assert path.parent == tmp_path / "results" / "history"
    data = json.loads(path.read_text())
    assert (data["schema"], data["kind"], data["record"]["update_baselines"]) == (2, "run record", False)
    record = read_record(path)
    [configuration] = record.configurations
    assert (configuration.rows, configuration.status, configuration.verdict.kinds) == (
        [ROW.node_id], "regression", ["wall-time"])
    [wall] = [f for f in configuration.verdict.metrics if f.kind == "wall"]
    assert (wall.before, wall.after, wall.threshold_pct) == (10.0, 16.0, 50.0)
    assert configuration.gpu_uuid == "GPU-1234"  # under pytest-xdist each configuration names its own GPU
    assert configuration.overhead == slower.overhead  # where the case's time went (the result, not trained, unwritten)
    assert (configuration.baseline.minutes_per_1000_samples, configuration.now.minutes_per_1000_samples) == (10.0, 16.0)
    assert {"gpu", "driver", "settings"} <= set(record.machine) and record.versions and record.commit
    assert record.started <= record.finished and not record.interrupted and record.shard is None


def test_the_run_record_names_the_shard_it_covered(tmp_path, monkeypatch, result_factory):
    runner = checked(make_runner(tmp_path, monkeypatch, update_baselines=True, shard="2/3"), result_factory())
    recorder = Recorder(runner)
    assert read_record(recorder.write(recorder.record())).shard == "2/3"  # history.runs joins the shards of a pass


def test_the_run_record_says_how_long_writing_each_result_file_took(tmp_path, monkeypatch, result_factory):
    runner = make_runner(tmp_path, monkeypatch, update_baselines=True)
    result = result_factory()
    monkeypatch.setattr(runner, "_launcher", type("Launcher", (), {"run": lambda self, spec, options: result})())
    runner.check(ROW)
    [configuration] = Recorder(runner).record().configurations
    assert (tmp_path / "results" / "nvidia-h200" / f"{result.key}.json").exists()
    assert configuration.overhead.keys() == {*result.overhead, "write_s"} and configuration.overhead["write_s"] > 0
    assert "write_s" not in result.overhead  # the file holds the result as it was written


def test_a_pass_against_another_gpu_models_baseline_says_it_was_judged_on_memory_alone(tmp_path, monkeypatch,
                                                                                       result_factory):
    checked(make_runner(tmp_path, monkeypatch, update_baselines=True), result_factory(allocated=900.0))
    h100 = make_runner(tmp_path, monkeypatch)
    monkeypatch.setattr(Runner, "gpu", "NVIDIA H100 80GB HBM3")
    checked(h100, result_factory(gpu="NVIDIA H100 80GB HBM3", allocated=900.0, minutes=30.0))
    lines = run_summary(Recorder(h100).record())
    assert lines[0].endswith("-> pass") and lines[1] == (
        "  memory only, against a baseline of NVIDIA H200 (compute capability 9.0: the same tensors); speed is not "
        "compared across GPU models")
    across = ("memory alone judged in 1 of 1 configurations: against baselines of NVIDIA H200 (another GPU model of "
              "the same compute capability; baselines written on this GPU model judge speed too)")
    assert lines[2:] == ["1 pass, 0 skipped", across]  # and not "wall time not judged ... (GPU time ... judged them)"


def test_a_pass_measured_twice_says_what_its_first_measurement_showed(tmp_path, monkeypatch, result_factory):
    checked(make_runner(tmp_path, monkeypatch, update_baselines=True), result_factory(minutes=10.0))
    runner = make_runner(tmp_path, monkeypatch)
    runner._launcher = ReplayLauncher(result_factory(minutes=10.5))
    lines = run_summary(Recorder(checked(runner, result_factory(minutes=16.0))).record())
    note = ("  wall time alone was worse (+60.0% against the 50% band) in a first measurement, not in a second, in a "
            "fresh process: the verdict is the second's")
    assert lines[0].endswith("-> pass") and lines[1:] == [note, "1 pass, 0 skipped"]


def test_a_merged_part_joins_the_summary_and_the_run_record(tmp_path, monkeypatch, result_factory):
    worker = Recorder(checked(make_runner(tmp_path, monkeypatch), result_factory(OTHER.spec), OTHER))
    whole = Recorder(checked(make_runner(tmp_path, monkeypatch), result_factory()))
    alone = run_summary(whole.record(), skipped=2)
    whole.merge(json.loads(json.dumps(worker.part())))  # plain data, as pytest-xdist carries it
    lines = run_summary(whole.record(), skipped=2)
    assert lines[:-1] == alone[:-1] + run_summary(worker.record())[:-1] and lines[-1] == "2 no-baseline, 2 skipped"
    record = read_record(whole.write(whole.record()))
    assert [c.rows for c in record.configurations] == [[ROW.node_id], [OTHER.node_id]]


def test_the_summary_counts_configurations_whose_wall_time_was_not_judged(tmp_path, monkeypatch, result_factory):
    writer = make_runner(tmp_path, monkeypatch, update_baselines=True)
    for row in (ROW, OTHER):
        checked(writer, result_factory(row.spec), row)
    elsewhere = result_factory(OTHER.spec)
    elsewhere.machine = {**elsewhere.machine, "host": ["GPU-another-host"]}
    worker = Recorder(checked(make_runner(tmp_path, monkeypatch), elsewhere, OTHER))
    whole = Recorder(checked(make_runner(tmp_path, monkeypatch), result_factory()))
    assert not any(line.startswith("wall time not judged") for line in run_summary(whole.record()))
    whole.merge(json.loads(json.dumps(worker.part())))
    assert run_summary(whole.record())[-1] == (
        "wall time not judged in 1 of 2 configurations: their baselines ran on another host or do not name theirs "
        "(GPU time and memory judged them; baselines written on this host judge wall time too)")


def test_a_run_whose_rows_were_all_refused_still_has_its_section_and_record(tmp_path, monkeypatch, result_factory):
    refused = result_factory(attention="sdpa")  # ran with --sftbench-attn-fallback: never a baseline
    recorder = Recorder(checked(make_runner(tmp_path, monkeypatch, update_baselines=True), refused))
    record = recorder.record()
    assert [c.status for c in record.configurations] == ["refused"]
    assert run_summary(record)[0].endswith(
        f"-> {ROW.node_id} ran sdpa (--sftbench-attn-fallback) for a row measured with flash_attention_2: its baseline "
        "is not rewritten with another kernel's numbers")
    assert read_record(recorder.write(record)).configurations[0].status == "refused"


def test_an_interrupted_update_run_says_so_and_which_baselines_it_rewrote(tmp_path, monkeypatch, result_factory):
    runner = checked(make_runner(tmp_path, monkeypatch, update_baselines=True), result_factory())
    recorder = Recorder(runner)
    record = read_record(recorder.write(recorder.record(interrupted=True)))
    written = str(tmp_path / "baselines" / "nvidia-h200" / f"{ROW.spec.key}.json")
    assert record.interrupted and record.baselines_written == [written]
    assert run_summary(record)[-1] == f"the run was interrupted after 1 configurations; baselines it rewrote: {written}"


def test_a_run_that_checked_nothing_and_was_not_interrupted_writes_no_record(tmp_path, monkeypatch):
    runner = make_runner(tmp_path, monkeypatch)
    recorder = Recorder(runner)
    assert recorder.write(recorder.record()) is None
    # Interrupted before any case (a pytest session of other tests, the plugin loaded): nothing to say either.
    assert recorder.write(recorder.record(interrupted=True)) is None
    (tmp_path / "baselines").mkdir()
    runner.prepare()  # the first case was about to train when the run was interrupted
    assert recorder.write(recorder.record(interrupted=True)) is not None
