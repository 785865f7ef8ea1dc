"""sftbench.selftest: the summary of a self-test's run records, read as data, and the command that writes it."""

from pathlib import Path

import pytest

from sftbench.__main__ import main
from sftbench.result import Metrics
from sftbench.selftest import markdown, summarize
from sftbench.storage.records import Configuration, RunRecord, write_record
from sftbench.verdicts import FamilyFinding, MetricFinding, Note, Verdict

REPO = Path(__file__).resolve().parents[2]


def family(name, change, verdict="same", threshold=2.0):
    return FamilyFinding(name, 1.0, 1.0 + change / 100, 5.0, change / 20, 0.0, change, threshold, "same GPU", None,
                         verdict)


def configuration(key, status="pass", kinds=(), gpu=(3.0, 3.0), wall=(5.0, 5.0), reserved=(100.0, 100.0),
                  families=(), baseline_families=None, host=(None, None)):
    def metrics(i):
        return Metrics(gpu_minutes_per_1000_samples=gpu[i], minutes_per_1000_samples=wall[i], host_probe_ms=host[i],
                       max_reserved_mib=reserved[i], max_allocated_mib=reserved[i],
                       gpu_minutes_by_family=baseline_families if i == 0 else None)
    findings = [MetricFinding("gpu_minutes_per_1000_samples", "gpu", gpu[0], gpu[1], 100 * (gpu[1] / gpu[0] - 1), 2.0,
                              "tolerance", "worse" if "kernel" in kinds and not families else "same")]
    return Configuration(key=key, rows=[f"test_x[{key}]"], status=status, now=metrics(1), baseline=metrics(0),
                         verdict=Verdict(status, list(kinds), findings, list(families)))


def record(settings, *configurations, update=False, minute=0):
    return RunRecord(started=f"2026-11-29T23:{minute:02d}:30+00:00", finished=f"2026-11-29T23:{minute:02d}:59+00:00",
                     commit="abc1234", machine={"gpu": "NVIDIA H200", "driver": "580", "settings": settings},
                     versions={"torch": "2.11.0", "transformers": "5.17.0"}, update_baselines=update,
                     configurations=list(configurations))


RECORDS = [
    record({}, configuration("a"), update=True),  # the baseline run: left out
    record({}, configuration("a", gpu=(3.0, 3.03), families=[family("GEMM", 0.5), family("attention forward", -1.2)]),
           configuration("b", "improvement"), minute=1),
    record({}, configuration("a", "regression", ["wall-time"], wall=(5.0, 6.5), host=(5.0, 6.25)), configuration("b"),
           minute=2),
    record({"SFTBENCH_INJECT_GPU_PCT": "5", "SFTBENCH_INJECT_MEMORY_PCT": "3"},
           configuration("a", "regression", ["kernel", "memory"], gpu=(3.0, 3.18), reserved=(100.0, 103.0)),
           configuration("b", "regression", ["kernel"], gpu=(3.0, 3.15)), minute=3),
    record({"SFTBENCH_INJECT_HOST_MS": "60"}, configuration("a", "regression", ["host-side"], wall=(5.0, 6.5)),
           configuration("b", wall=(5.0, 5.4)), minute=4),
]


def paths(records):
    return [(Path(f"r{i}.json"), r) for i, r in enumerate(records)]


def test_the_summary_counts_failures_of_clean_reruns_and_what_each_injection_flagged():
    summary = summarize(paths(RECORDS))
    assert summary["records"] == ["r4.json", "r3.json", "r2.json", "r1.json"]  # what made it, newest first
    assert [rerun["failures"] for rerun in summary["clean_reruns"]] == [0, 1]  # in the order they ran
    rerun = summary["clean_reruns"][0]
    assert (rerun["record"], rerun["configurations"]) == ("r1.json", ["a", "b"])
    assert rerun["gpu_time_change_pct"] == {"a": 1.0, "b": 0.0}
    assert rerun["nearest_family"]["a"] == {"family": "attention forward", "change_pct": -1.2, "threshold_pct": 2.0,
                                            "basis": "same GPU"}
    injected = summary["injected"]
    assert (injected["gpu_time_5pct"]["flagged"], injected["gpu_time_5pct"]["configurations"]) == (2, ["a", "b"])
    assert injected["memory_3pct"]["flagged"] == 1 and injected["memory_3pct"]["max_reserved_mib_change_pct"]["a"] == 3.0
    assert (injected["host_time"]["flagged"], injected["host_time"]["within_noise"]) == (1, 1)
    assert injected["host_time"]["wall_time_change_pct"] == {"a": 30.0, "b": 8.0}
    page = markdown(summary)
    assert "| clean rerun 2 (2026-11-29T23:02) | abc1234 | 1 failure | 2 |" in page
    assert summary["clean_reruns"][1]["host_pace_change_pct"] == {"a": 25.0, "b": None}
    assert "| `a` | +1.00 / +0.00; attention forward -1.20 / 2 | +0.00 / +30.00 (host +25.00) |" in page
    assert page.endswith("Wall time of the clean reruns moved by up to 30.0% against its baseline (`a`): on this host "
                         "a `--sftbench-time-tolerance` under that fails clean reruns.\n")


def test_a_configuration_measured_twice_in_a_clean_rerun_is_listed_with_what_its_first_measurement_showed():
    twice = configuration("a")
    pace = {"before_ms": 9.76, "now_ms": 16.29}  # +66.9%
    twice.verdict.notes.append(Note("re-measured", {"change_pct": 58.1, "threshold_pct": 50.0, "host_pace": pace,
                                                    "confirmed": False}))
    summary = summarize(paths([RECORDS[0], record({}, twice, configuration("b"), minute=1)]))
    assert summary["clean_reruns"][0]["remeasured"] == {"a": {"change_pct": 58.1, "threshold_pct": 50.0,
                                                              "host_pace": pace, "confirmed": False}}
    page = markdown(summary)
    assert "| clean rerun 1 (2026-11-29T23:01) | abc1234 | 0 failures (1 measured twice) | 2 | 2 pass |" in page
    assert ("Clean rerun 1, `a`: wall time alone was worse (+58.1% against the 50% band, the host's own pace +66.9%) "
            "in a first measurement, not in a second, in a fresh process: the verdict is the second's.") in page
    assert "moved by up to 58.1% against its baseline (`a`)" in page  # the first measurement's move counts


def test_a_family_injection_counts_the_configurations_it_could_slow_and_the_families_they_named():
    target = {"GEMM": 2.0, "attention backward": 0.3}
    injected = record(
        {"SFTBENCH_INJECT_KERNELS": "attention:3"},
        configuration("a", "regression", ["kernel"], (3.0, 3.03), families=[
            family("attention forward", 3.1, "worse"), family("attention backward", 2.9, "worse")],
            baseline_families=target),
        configuration("b", "regression", ["kernel", "host-side"], (3.0, 3.09),
                      families=[family("attention backward", 3.0, "worse")], baseline_families=target),
        configuration("c", "regression", ["kernel"], (3.0, 3.01), families=[family("GEMM", 3.0, "worse")],
                      baseline_families=target),  # the wrong family
        configuration("d", families=[family("attention backward", 1.0)], baseline_families=target),
        configuration("e", baseline_families={"GEMM": 2.0}),  # eager: no flash-attn kernels to slow
        minute=5)
    stage = summarize(paths([RECORDS[1], injected]))["family_injected"]["attention:3"]
    assert (len(stage["configurations"]), stage["flagged"], stage["named_right"], stage["step_under_2pct"]) == (4, 3, 2, 3)
    assert stage["not_applicable"] == ["e"] and stage["commit"] == "abc1234" and stage["record"] == "r1.json"
    assert stage["family_change_pct"]["a"]["attention forward"] == {"change_pct": 3.1, "threshold_pct": 2.0,
                                                                   "basis": "same GPU"}
    assert "| SFTBENCH_INJECT_KERNELS=attention:3 | abc1234 | 3 (2 naming attention backward and attention forward; " \
           "3 with the step under 2%) | 4 |" in markdown(summarize(paths([RECORDS[1], injected])))


def test_a_memory_injection_counts_the_configurations_flagged_and_those_whose_target_category_grew_most():
    from sftbench.verdicts import CategoryMove

    def grown(key, moves, kinds=("memory",)):
        c = configuration(key, "regression" if kinds else "pass", kinds, reserved=(100.0, 103.0))
        c.verdict.memory = [CategoryMove(name, 10.0, 10.0 + mib) for name, mib in moves]
        return c

    injected = record({"SFTBENCH_INJECT_MEMORY_IN": "optimizer:3"},
                      grown("a", [("optimizer states", 3.0)]),
                      grown("b", [("activations and temporaries", 3.0), ("optimizer states", 1.0)]),  # the wrong one
                      grown("c", [("optimizer states", 1.5)], kinds=()),  # under the tolerance
                      grown("d", [("allocator slack", 4.0), ("optimizer states", 3.0)]),  # ordered before slack went last
                      grown("e", [("allocator slack", 4.0)]),  # an allocator change names no category
                      minute=6)
    summary = summarize(paths([RECORDS[1], injected]))
    stage = summary["memory_injected"]["optimizer:3"]
    assert (stage["category"], stage["flagged"], stage["named_right"]) == ("optimizer states", 4, 2)
    assert stage["configurations"] == ["a", "b", "c", "d", "e"] and stage["max_allocated_change_pct"]["a"] == 3.0
    assert stage["category_change_mib"]["b"] == {"activations and temporaries": 3.0, "optimizer states": 1.0}
    page = markdown(summary)
    assert "| SFTBENCH_INJECT_MEMORY_IN=optimizer:3 | abc1234 | 4 (2 with optimizer states grown most) | 5 |" in page
    assert "| `d` | +3.00: optimizer states +3, allocator slack +4 |" in page  # tensors first, as verdicts name them
    assert "| configuration |  |" not in markdown({**summary, "clean_reruns": []})  # no empty table of no reruns


def test_the_command_writes_the_json_and_says_what_was_found(tmp_path, capsys):
    for i, r in enumerate(RECORDS):
        write_record(tmp_path, r, i)
    out = tmp_path / "out" / "selftest.json"
    assert main(["selftest", str(tmp_path), "--out", str(out)]) == 0
    import json

    data = json.loads(out.read_text())
    assert (data["schema"], data["kind"], len(data["summary"]["records"])) == (2, "self-test", 4)
    assert "sftbench: selftest: 1 failure in 2 clean reruns of 2, 2 configurations" in capsys.readouterr().out


def test_records_without_a_comparing_run_are_one_clear_error(tmp_path, capsys):
    write_record(tmp_path, RECORDS[0], 0)
    assert main(["selftest", str(tmp_path), "--out", str(tmp_path / "s.json")]) == 2
    assert capsys.readouterr().err.strip() == "sftbench: selftest: no comparing run among the records"


def test_a_file_that_is_no_run_record_is_named(tmp_path, capsys):
    (tmp_path / "notes.json").write_text('{"notes": 1}')
    assert main(["selftest", str(tmp_path / "notes.json"), "--out", str(tmp_path / "s.json")]) == 2
    assert capsys.readouterr().err.startswith(f"sftbench: selftest: {tmp_path / 'notes.json'} is not an sftbench file")


def test_records_whose_verdicts_are_text_are_refused_naming_the_record(tmp_path, capsys):
    old = REPO / "docs" / "runs-h200" / "2026-12-04-gpu-c-gemm5.json"
    assert main(["selftest", str(old), "--out", str(tmp_path / "s.json")]) == 2
    assert capsys.readouterr().err == (f"sftbench: selftest: {old} is a run record of schema 1, whose verdicts are text: "
                                       "the self-test reads verdicts as data; make its runs again\n")


@pytest.mark.parametrize("stage", ["clean1", "gpu5-memory3", "attention3"])
def test_run_stages_runs_pytest_with_each_stages_knobs(tmp_path, monkeypatch, stage):
    from sftbench import selftest

    calls = []
    monkeypatch.setattr(selftest.subprocess, "run", lambda command, env, check: calls.append((command, env)))
    folders = selftest.run_stages(["-k", "qwen-7b"], tmp_path, log=lambda line: None)
    assert [f.parent.name for f in folders] == list(selftest.STAGES)
    command, env = calls[list(selftest.STAGES).index(stage)]
    assert command[-2:] == ["--sftbench-results", str(tmp_path / stage)] and "-k" in command
    assert all(env[name] == value for name, value in selftest.STAGES[stage].items())
    assert "--sftbench-update-baselines" in calls[0][0] and "--sftbench-update-baselines" not in command


def test_an_unknown_stage_is_one_clear_error(tmp_path, capsys):
    assert main(["selftest", "--run", "-k x", "--stages", "clean1,nope", "--out", str(tmp_path / "s.json")]) == 2
    assert capsys.readouterr().err.startswith("sftbench: selftest: unknown stages nope; stages: update, clean1")
