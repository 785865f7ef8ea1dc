"""sftbench.history and `python -m sftbench history`: run records as a history page, plots and a job summary.

The fixture is three run records written by sftbench.recorder itself (no case runs): the baselines written,
a passing run, then a run with a kernel regression in one configuration and a memory improvement in the other.
"""

import dataclasses
import subprocess
import sys
from datetime import datetime, timezone

import pytest

from sftbench import environment, history
from sftbench.__main__ import main
from sftbench.catalog import Row
from sftbench.recorder import Recorder
from sftbench.runner import RunConfig, Runner
from sftbench.spec import CaseSpec
from sftbench.storage.records import RunRecord, read_record, write_record

from .conftest import VERSIONS

LONG = Row(table="lora_max_length", id="qwen-7b-chat-4096", spec=CaseSpec("qwen-7b-chat", max_length=4096))
SHORT = Row(table="lora_max_length", id="qwen-7b-chat-2048", spec=CaseSpec("qwen-7b-chat", max_length=2048))
# (day of November 2026, commit, update the baselines?, {row: result fields}); SHORT has no GPU clock.
RUNS = [
    (1, "aaa1111", True, {LONG: dict(minutes=10.0, gpu_minutes_per_1000_samples=8.0), SHORT: dict(minutes=5.0)}),
    (2, "bbb2222", False, {LONG: dict(minutes=10.1, gpu_minutes_per_1000_samples=8.0), SHORT: dict(minutes=5.0)}),
    (3, "ccc3333", False, {LONG: dict(minutes=16.0, gpu_minutes_per_1000_samples=10.5,
                                      gpu_minutes_by_family={"GEMM": 7.5, "attention backward": 3.0}),
                           SHORT: dict(minutes=5.0, reserved=900.0)}),
]


def run_record(tmp_path, monkeypatch, result_factory, day, commit, update, fields) -> RunRecord:
    monkeypatch.setenv("SFTBENCH_COMMIT", commit)
    runner = Runner(RunConfig(baselines_dir=tmp_path / "baselines", results_dir=tmp_path / "results",
                              update_baselines=update), log=lambda line: None)
    monkeypatch.setattr(runner, "skip_reason", lambda spec: None)
    for row, values in fields.items():
        runner.results[row.spec] = result_factory(row.spec, **values)
        runner.check(row)
    return dataclasses.replace(Recorder(runner).record(),
                               started=datetime(2026, 11, day, 2, 0, tzinfo=timezone.utc).isoformat(),
                               finished=datetime(2026, 11, day, 2, 40, tzinfo=timezone.utc).isoformat())


@pytest.fixture
def records(tmp_path, monkeypatch, result_factory):
    """The folder of the three run records, as each run writes them to results/history."""
    monkeypatch.setattr(Runner, "gpu", "NVIDIA H200")
    monkeypatch.setattr(environment, "machine", lambda: {"gpu": "NVIDIA H200", "driver": "580.1", "cuda": "13.0"})
    monkeypatch.setattr(environment, "package_versions", lambda: dict(VERSIONS))
    folder = tmp_path / "results" / "history"
    folder.mkdir(parents=True)
    for day, commit, update, fields in RUNS:
        write_record(folder, run_record(tmp_path, monkeypatch, result_factory, day, commit, update, fields), 1)
    return folder


def rows_of_table(text: str, heading: str) -> list[list[str]]:
    """The cells of the first table under `heading`, header and separator left out."""
    section = text.split(heading + "\n", 1)[1].split("\n## ", 1)[0]
    table = [line for line in section.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in table[2:]]


def test_the_page_lists_the_runs_and_each_configurations_values_per_run(records, tmp_path):
    out = tmp_path / "history.md"
    assert main(["history", str(records), "--out", str(out), "--plots", str(tmp_path / "history")]) == 0
    text = out.read_text()
    runs = rows_of_table(text, "## Runs")
    assert [run[:3] for run in runs] == [["1", "2026-11-01 02:00", "aaa1111"], ["2", "2026-11-02 02:00", "bbb2222"],
                                         ["3", "2026-11-03 02:00", "ccc3333"]]
    assert runs[0][3] == "NVIDIA H200, driver 580.1, CUDA 13.0"
    assert runs[0][4] == "torch 2.11.0, transformers 5.17.0, peft 0.21.0, flash-attn 2.8.3"
    assert runs[0][5] == "quick (baselines written)" and runs[0][6] == "2 baseline written"
    assert runs[2][6] == "1 regression, 1 improvement"

    long = rows_of_table(text, f"## {LONG.spec.key}")
    assert [(r[0], r[3], r[4], r[5], r[6]) for r in long] == [
        ("1", "baseline written", "8", "10", "1000"), ("2", "pass", "8", "10.1", "1000"),
        ("3", "kernel and host-side regression", "10.5", "16", "1000"), ("baseline", "as of run 3", "8", "10", "1000")]
    short = rows_of_table(text, f"## {SHORT.spec.key}")
    assert [(r[3], r[4], r[6]) for r in short][1:] == [("pass", "–", "1000"), ("improvement", "–", "900"),
                                                      ("as of run 3", "–", "1000")]
    for row in (LONG, SHORT):
        png = tmp_path / "history" / "nvidia-h200" / f"{row.spec.key}.png"
        assert f"](history/nvidia-h200/{row.spec.key}.png)" in text
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_summary_puts_regressions_first_then_improvements_then_the_rest(records, tmp_path, capsys):
    folder = tmp_path / "passing"
    folder.mkdir()
    for path in sorted(records.iterdir())[:2]:
        (folder / path.name).write_text(path.read_text())
    assert main(["history", str(records), "--summary"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("## sftbench: 2026-11-03 02:00 UTC, commit ccc3333, NVIDIA H200\n")
    assert text.index("### Regressions") < text.index(f"**{LONG.node_id}**: kernel and host-side regression") \
        < text.index("### Improvements") < text.index(f"**{SHORT.node_id}**: improvement")
    assert "gpu_minutes_per_1000_samples: 8 -> 10.5" in text.replace(".0000", "").replace("0000", "")
    assert main(["history", str(folder), "--summary"]) == 0
    text = capsys.readouterr().out
    assert "### Regressions" not in text and "### Improvements" not in text
    assert rows_of_table(text, "### The other configurations") == [
        [LONG.node_id, "pass", "8 (baseline 8)", "10.1 (baseline 10)", "1000 (baseline 1000)"],
        [SHORT.node_id, "pass", "–", "5 (baseline 5)", "1000 (baseline 1000)"]]


def test_the_summary_says_in_how_many_configurations_wall_time_was_not_judged(tmp_path, monkeypatch, result_factory):
    monkeypatch.setattr(Runner, "gpu", "NVIDIA H200")
    monkeypatch.setattr(environment, "machine", lambda: {"gpu": "NVIDIA H200", "driver": "580.1", "cuda": "13.0"})
    run_record(tmp_path, monkeypatch, result_factory, 1, "aaa1111", True, RUNS[0][3])
    elsewhere = {**result_factory().machine, "host": ["GPU-another-host"]}  # 40% slower there: not judged
    record = run_record(tmp_path, monkeypatch, result_factory, 2, "bbb2222", False, {
        LONG: {"minutes": 14.0, "gpu_minutes_per_1000_samples": 8.0, "machine": elsewhere}, SHORT: {"minutes": 5.0}})
    assert [(c.status, c.verdict.wall_judged) for c in record.configurations] == [("pass", False), ("pass", True)]
    assert ("Wall time not judged in 1 of 2 configurations: their baselines ran on another host or do not name "
            "theirs.") in history.summary(history.runs([record])[-1])


def newest(records) -> RunRecord:
    return read_record(max(records.iterdir()))


def test_the_records_of_one_runs_shards_are_one_run(records):
    record = newest(records)
    shards = [dataclasses.replace(record, configurations=[c], started=record.started.replace("02:00", f"02:0{i}"))
              for i, c in enumerate(record.configurations)]
    [run] = history.runs(shards)
    assert [c.key for c in run.configurations] == [LONG.spec.key, SHORT.spec.key]
    later = dataclasses.replace(shards[1], started=record.finished.replace("02:40", "03:00"))
    assert len(history.runs([shards[0], later])) == 2
    upgraded = dataclasses.replace(shards[1], versions={**shards[1].versions, "transformers": "5.24.0"})
    assert len(history.runs([shards[0], upgraded])) == 2  # run beside it


def test_the_shards_of_one_selection_run_one_after_another_are_one_run(records):
    record = newest(records)
    first, second = (dataclasses.replace(record, configurations=[c], shard=f"{i}/2",
                                         started=f"2026-12-06T0{i}:00:00+00:00", finished=f"2026-12-06T0{i}:30:00+00:00")
                     for i, c in enumerate(record.configurations, 1))
    [run] = history.runs([second, first])
    assert [c.key for c in run.configurations] == [c.key for c in record.configurations]
    assert (run.started, run.finished) == (first.started, second.finished) and run.shard is None
    assert "| all |" in history.cost(run)
    again = dataclasses.replace(second, shard="1/2")  # a second pass of shard 1: another run
    assert len(history.runs([first, again])) == 2
    other_split = dataclasses.replace(second, shard="2/3")
    assert len(history.runs([first, other_split])) == 2
    unsharded = dataclasses.replace(second, shard=None)
    assert len(history.runs([first, unsharded])) == 2


def test_a_run_that_lost_a_worker_says_so_in_the_page_and_the_summary(records):
    lost = dataclasses.replace(newest(records), lost_parts=["pytest-xdist worker gw1"])
    [run] = history.runs([lost])
    incomplete = "; incomplete: pytest-xdist worker gw1 ended without its report"
    assert f"1 regression, 1 improvement{incomplete}. Stack:" in history.summary(run)
    assert f"| 1 regression, 1 improvement{incomplete} |" in history.page([run])


def test_drawing_the_plots_says_so_first(records, tmp_path, capsys):
    assert main(["history", str(records), "--out", str(tmp_path / "h.md"), "--plots", str(tmp_path / "h")]) == 0
    assert capsys.readouterr().err == f"sftbench: drawing the plots of 2 configurations in {tmp_path / 'h'} ...\n"


def test_a_bad_file_is_named_and_skipped_and_the_command_fails(records, tmp_path, capsys):
    (records / "broken.json").write_text('{"schema": 1, "started": ')
    (records / "other.json").write_text('{"schema": 7}')
    out = tmp_path / "history.md"
    assert main(["history", str(records), "--out", str(out)]) == 1
    problems = capsys.readouterr().err.splitlines()
    assert problems == [(f"sftbench: skipped {records / 'broken.json'} cannot be read "
                         "(JSONDecodeError: Expecting value: line 1 column 26 (char 25))"),
                        (f"sftbench: skipped {records / 'other.json'}: schema 7: this sftbench reads schemas 1 and 2 "
                         "(a newer sftbench wrote it, or it is not an sftbench file)")]
    assert "3 runs" in out.read_text()


@pytest.mark.parametrize("folder", ["empty", "missing"])
def test_a_folder_without_records_is_one_line_and_fails(tmp_path, capsys, folder):
    (tmp_path / "empty").mkdir()
    assert main(["history", str(tmp_path / folder)]) == 2
    assert capsys.readouterr().err == (f"sftbench: no run records in {tmp_path / folder} (each pytest run of the "
                                       "benchmarks writes one to <results>/history/)\n")


def test_the_history_imports_no_torch(records, tmp_path):
    code = ("import sys; from sftbench.__main__ import main; "
            "main(['history', sys.argv[1], '--out', sys.argv[2], '--plots', sys.argv[3]]); "
            "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(records), str(tmp_path / "h.md"), str(tmp_path / "h")],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_a_run_record_keeps_each_configurations_gpu_minutes_by_kernel_family(records):
    [long] = [c for c in newest(records).configurations if c.key == LONG.spec.key]
    assert long.now.gpu_minutes_by_family == {"GEMM": 7.5, "attention backward": 3.0}


def test_the_committed_schema_1_records_make_the_page_as_before():
    from pathlib import Path

    records, problems = history.records_of(Path(__file__).resolve().parents[2] / "docs" / "runs-h200")
    assert not problems and "1 regression" in history.page(history.runs(records))


def test_the_cost_page_says_where_each_configurations_time_went(records, capsys):
    record = newest(records)
    phases = {"setup_s": 1.0, "warmup_s": 2.0, "timed_steps_s": 4.0, "counted_step_s": 1.5, "kernel_read_s": 0.5,
              "memory_categories_s": 0.25, "case_s": 10.0, "wall_s": 10.5}
    first, second = record.configurations
    record = dataclasses.replace(record, configurations=[
        dataclasses.replace(first, overhead={**phases, "write_s": 0.25}),
        # Older records: separate traced steps and their repeats; older still, repeats and reading in one.
        dataclasses.replace(second, overhead={"setup_s": 1.0, "kernel_steps_s": 1.0, "kernel_repeats_s": 0.5,
                                              "kernel_trace_s": 2.0, "case_s": 5.0})])
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in history.cost(record).splitlines()
            if line.startswith("|")]
    assert rows[0][1:] == ["wall", "set-up", "warm-up", "timed steps", "counted step", "traced steps", "family repeats",
                           "reading CUPTI's records", "repeats and reading", "memory by category", "rest of the case",
                           "launcher", "writing"]
    assert rows[2][1:] == ["10.5", "1.0", "2.0", "4.0", "1.5", "", "", "0.5", "", "0.2", "0.8", "0.5", "0.2"]
    # No wall: no launcher share.
    assert rows[3][1:] == ["", "1.0", "", "", "", "1.0", "0.5", "", "2.0", "", "0.5", "", ""]
    assert rows[4][1:3] == ["10.5", "2.0"] and rows[5][2:4] == ["19%", "19%"]  # summed, and shares of the wall
    assert main(["history", str(records), "--cost"]) == 0
    assert capsys.readouterr().out.startswith("## Where the time went: ")


def test_a_run_beside_another_says_per_configuration_whether_verdicts_and_memory_agree(records, tmp_path, capsys):
    _, second, third = history.runs(history.records_of(records)[0])
    text = history.side_by_side(third, second)
    rows = {cells[0]: cells[1:] for cells in (
        [cell.strip() for cell in line.strip("|").split("|")] for line in text.splitlines() if line.startswith("| test"))}
    assert rows[LONG.node_id][:5] == ["kernel and host-side regression", "pass", "10.5", "8", "+31.25%"]
    assert rows[SHORT.node_id][5:7] == ["900", "1000"]  # max reserved: this run, beside
    assert text.rstrip().endswith("2 configurations in both: verdicts identical in 0, memory identical to the MiB in 1, "
                                  "GPU-minutes +31.25% to +31.25%.")
    other = tmp_path / "other"
    other.mkdir()
    write_record(other, second, 1)
    assert main(["history", str(records), "--beside", str(other)]) == 0
    assert "beside" in capsys.readouterr().out
    (other / "20261207T004708Z-7006117-552.json").write_text("{not json")  # a damaged record there: named, exit 1
    assert main(["history", str(records), "--beside", str(other)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("sftbench: --beside: ") and "20261207T004708Z-7006117-552.json" in err
    assert main(["history", str(records), "--beside", str(tmp_path / "none")]) == 2
    assert capsys.readouterr().err == f"sftbench: --beside {tmp_path / 'none'}: no run records there\n"
