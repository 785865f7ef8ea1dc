"""sftbench.selftest: the summary of a self-test's run records, and the command that writes it."""

import json

import pytest

from sftbench.__main__ import main
from sftbench.selftest import markdown, summarize


def configuration(key, label, verdict, gpu=(3.0, 3.0), wall=(5.0, 5.0), reserved=(100.0, 100.0)):
    now = {"gpu_minutes_per_1000_samples": gpu[1], "minutes_per_1000_samples": wall[1], "max_reserved_mib": reserved[1],
           "max_allocated_mib": reserved[1]}
    baseline = {"gpu_minutes_per_1000_samples": gpu[0], "minutes_per_1000_samples": wall[0],
                "max_reserved_mib": reserved[0], "max_allocated_mib": reserved[0]}
    return {"key": key, "rows": [f"test_x[{key}]"], "verdict": verdict, "label": label, "now": now,
            "baseline": baseline, "explanation": []}


def record(settings, *configurations, update=False):
    return {"schema": 1, "started": "2026-11-29T23:54:30+00:00", "finished": "2026-11-29T23:57:30+00:00",
            "commit": "abc1234", "gpu": "NVIDIA H200", "driver": "580",
            "versions": {"torch": "2.11.0", "transformers": "5.17.0"}, "settings": settings,
            "update_baselines": update, "configurations": list(configurations)}


RECORDS = [
    record({}, configuration("a", "pass", "pass"), update=True),  # the baseline run: left out
    record({}, configuration("a", "pass", "pass", gpu=(3.0, 3.03)), configuration("b", "improvement", "improvement")),
    record({}, configuration("a", "wall-time regression", "regression"), configuration("b", "pass", "pass")),
    record({"SFTBENCH_INJECT_GPU_PCT": "5", "SFTBENCH_INJECT_MEMORY_PCT": "3"},
           configuration("a", "kernel regression, memory regression", "regression", gpu=(3.0, 3.18),
                         reserved=(100.0, 103.0)),
           configuration("b", "kernel regression", "regression", gpu=(3.0, 3.15))),
    record({"SFTBENCH_INJECT_HOST_MS": "60"}, configuration("a", "host-side regression", "regression", wall=(5.0, 6.5)),
           configuration("b", "pass", "pass", wall=(5.0, 5.4))),
]


def test_the_summary_counts_failures_of_clean_reruns_and_what_each_injection_flagged():
    summary = summarize(RECORDS)
    assert summary["configurations"] == 2 and summary["commit"] == "abc1234"
    assert [rerun["failures"] for rerun in summary["clean_reruns"]] == [0, 1]
    assert summary["clean_reruns"][0]["gpu_time_change_pct"] == {"a": 1.0, "b": 0.0}
    injected = summary["injected"]
    assert (injected["gpu_time_5pct"]["flagged"], injected["gpu_time_5pct"]["of"]) == (2, 2)
    assert injected["memory_3pct"]["flagged"] == 1 and injected["memory_3pct"]["max_reserved_mib_change_pct"]["a"] == 3.0
    assert (injected["host_time"]["flagged"], injected["host_time"]["within_noise"]) == (1, 1)
    assert injected["host_time"]["wall_time_change_pct"] == {"a": 30.0, "b": 8.0}
    page = markdown(summary)
    assert "| clean rerun 2 | 1 failures | 2 |" in page and "| `a` | +1.0 / +0.0 |" in page


def test_the_command_writes_the_json_and_says_what_was_found(tmp_path, capsys):
    for i, r in enumerate(RECORDS):
        (tmp_path / f"{i}.json").write_text(json.dumps(r))
    assert main(["selftest", str(tmp_path), "--out", str(tmp_path / "out" / "selftest.json")]) == 0
    assert json.loads((tmp_path / "out" / "selftest.json").read_text())["configurations"] == 2
    assert "2 configurations, 1 failures in 2 clean reruns" in capsys.readouterr().out


def test_records_without_a_comparing_run_are_one_clear_error(tmp_path, capsys):
    (tmp_path / "update.json").write_text(json.dumps(RECORDS[0]))
    assert main(["selftest", str(tmp_path), "--out", str(tmp_path / "s.json")]) == 2
    assert capsys.readouterr().err.strip() == "sftbench: selftest: no comparing run among the records"


def test_a_file_that_is_no_run_record_is_named(tmp_path, capsys):
    (tmp_path / "notes.json").write_text('{"notes": "H200 run"}')
    assert main(["selftest", str(tmp_path), "--out", str(tmp_path / "s.json")]) == 2
    assert capsys.readouterr().err == f"sftbench: selftest: {tmp_path / 'notes.json'}: not a run record of schema 1\n"


def test_a_family_injection_counts_the_configurations_it_could_slow_and_the_families_they_named():
    def family(key, label, gpu, attention):
        c = configuration(key, label, "regression" if "regression" in label else "pass", gpu=gpu)
        c["baseline"]["gpu_minutes_by_family"] = {"GEMM": 2.0, **({"attention backward": 0.3} if attention else {})}
        return c

    injected = record({"SFTBENCH_INJECT_KERNELS": "attention:10"},
                      family("a", "kernel (attention forward, attention backward) regression", (3.0, 3.03), True),
                      family("b", "kernel (attention backward) and host-side regression", (3.0, 3.09), True),
                      family("c", "kernel (GEMM) regression", (3.0, 3.01), True),  # the wrong family
                      family("d", "pass", (3.0, 3.0), True),
                      family("e", "pass", (3.0, 3.0), False))  # eager: no flash-attn kernels to slow
    stage = summarize([RECORDS[1], injected])["family_injected"]["attention:10"]
    assert (stage["configurations"], stage["flagged"], stage["named_right"], stage["step_under_2pct"]) == (4, 3, 2, 3)
    assert stage["not_applicable"] == ["e"] and stage["commit"] == "abc1234"
    assert "| SFTBENCH_INJECT_KERNELS=attention:10 | 3 (2 naming attention backward and attention forward; 3 with the " \
           "step under 2%) | 4 |" in markdown(summarize([RECORDS[1], injected]))


@pytest.mark.parametrize("stage", ["clean1", "gpu5-memory3"])
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
