"""The pytest plugin end to end: tiny CPU rows trained in pytest subprocesses, checked against baselines.

Each subprocess run starts the plugin's forkserver (torch and transformers imported once) and
trains its tiny cases, ~15-30 s a run on 2 cores: there are three (update, compare, strict), and
the tests share their results and one baseline folder. Collection-only
runs (sharding, usage errors) run in-process: they start no case.
"""

import json
import re
import shutil

import pytest

from sftbench.session import per_step_estimates
from sftbench.spec import CaseSpec
from sftbench.storage.baselines import BaselineStore
from sftbench.storage.results import read_result
from sftbench.trainer import FAMILY_REPEATS

from .conftest import scale_wall_time

SMOKE_MODULE = """
import pytest

from sftbench.catalog import Row
from sftbench.spec import CaseSpec


def tiny(samples, device="cpu"):
    return CaseSpec("tiny-qwen", device=device, attention="sdpa", max_length=64, samples=samples,
                    gradient_checkpointing=False)


ROWS = [
    Row(table="cpu_smoke", id="faster", spec=tiny(6)),
    Row(table="cpu_smoke", id="slower", spec=tiny(7)),
    Row(table="cpu_smoke", id="corrupt", spec=tiny(8)),
    Row(table="cpu_smoke", id="fresh", spec=tiny(5)),
    Row(table="cpu_smoke", id="gpu", spec=tiny(6, device="cuda")),
]
{extra}

@pytest.mark.parametrize("row", ROWS, ids=lambda row: row.id)
def test_cpu_smoke(row, check_row):
    check_row(row)
"""
# A second table showing two of the configurations again.
AGAIN = """
@pytest.mark.parametrize("row", ROWS[:2], ids=lambda row: row.id)
def test_again(row, check_row):
    check_row(row)
"""
# A row whose pytest-xdist worker dies after training it.
CRASH = """
import os


@pytest.mark.parametrize("row", ROWS[:1], ids=lambda row: row.id)
def test_crash(row, check_row):
    check_row(row)
    os._exit(3)
"""
# A configuration per CPU row (its sample count), so a baseline per row; "fresh" never gets one.
SAMPLES = {"faster": 6, "slower": 7, "corrupt": 8, "fresh": 5}
WITH_BASELINE = ("faster", "slower", "corrupt")


def key(row_id: str) -> str:
    return CaseSpec("tiny-qwen", device="cpu", attention="sdpa", max_length=64, samples=SAMPLES[row_id],
                    gradient_checkpointing=False).key


pytestmark = pytest.mark.usefixtures("no_gpu")  # the cuda row is skipped (conftest.py)


def write_module(pytester, extra: str = "") -> None:
    pytester.makepyfile(test_smoke=SMOKE_MODULE.replace("{extra}", extra))


def run(pytester, *args, baselines=None):
    """A pytest subprocess in pytester's folder, with its baselines and results there unless told."""
    return pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-rfEs", "--sftbench-timeout", "300",
        "--sftbench-baselines", str(baselines or pytester.path / "baselines"),
        "--sftbench-results", str(pytester.path / "results"), *args, timeout=600)


def sftbench_section(result) -> str:
    text = result.stdout.str()
    assert re.search(r"^=+ sftbench =+$", text, re.M), text
    return re.split(r"^=+ sftbench =+$", text, flags=re.M)[1]


def summary_line(result, row_id: str) -> str:
    lines = [line for line in sftbench_section(result).splitlines() if line.startswith(f"test_cpu_smoke[{row_id}]: ")]
    assert len(lines) == 1, sftbench_section(result)
    return lines[0]


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """The module's three subprocess runs, each made once by the first test that needs it."""
    return {"folder": tmp_path_factory.mktemp("shared") / "baselines"}


@pytest.fixture
def baselines(pytester, shared):
    """Baselines of faster, slower and corrupt, written once by an --sftbench-update-baselines run; a copy per test."""
    write_module(pytester)
    if "update" not in shared:
        shared["update"] = run(pytester, "--sftbench-update-baselines", "-k", "not fresh", baselines=shared["folder"])
    assert shared["folder"].is_dir(), shared["update"].stdout.str()
    copy = pytester.path / "baselines"
    shutil.copytree(shared["folder"], copy)
    return copy


@pytest.fixture
def compared(pytester, baselines, shared):
    """(result, folder) of one comparing run: the baseline of faster made 100x faster, of slower 100x slower
    (far beyond the noise of CPU timings on a busy machine), of corrupt broken; fresh has none; with
    --benchmark-json."""
    if "compare" not in shared:
        scale_wall_time(baselines / "cpu" / f"{key('faster')}.json", 0.01)
        scale_wall_time(baselines / "cpu" / f"{key('slower')}.json", 100)
        (baselines / "cpu" / f"{key('corrupt')}.json").write_text('{"schema": 1, "key": ')
        shared["compare"] = run(pytester, "--benchmark-json", "bench.json"), pytester.path
    return shared["compare"]


def test_update_baselines_writes_one_file_per_configuration_in_the_cpu_folder(baselines, shared):
    update = shared["update"]
    update.assert_outcomes(passed=3, skipped=1, deselected=1)
    assert sorted(p.name for p in shared["folder"].iterdir()) == [".sftbench.lock", ".sftbench.lock.run", "cpu"]
    files = sorted(p.name for p in (shared["folder"] / "cpu").iterdir())
    assert files == sorted(f"{key(row_id)}.json" for row_id in WITH_BASELINE)  # no .tmp left behind
    store = BaselineStore(baselines)
    for row_id in WITH_BASELINE:
        baseline = store.load("cpu", key(row_id))
        assert baseline.result.outcome == "ok" and baseline.result.timing.minutes_per_1000_samples > 0
        assert baseline.metadata["mode"] == "quick" and baseline.metadata["versions"]["torch"]
        assert re.fullmatch(rf".* -> baseline written: .*{re.escape(key(row_id))}\.json", summary_line(update, row_id))


def test_a_row_without_a_baseline_passes_as_no_baseline_and_writes_none(compared):
    result, folder = compared
    result.assert_outcomes(passed=2, failed=2, skipped=1)  # fresh and slower pass; faster and corrupt fail
    assert re.fullmatch(r"test_cpu_smoke\[fresh\]: .* min/1000 samples \(quick\), .* -> no-baseline",
                        summary_line(result, "fresh"))
    assert not (folder / "baselines" / "cpu" / f"{key('fresh')}.json").exists()  # comparing writes no baseline


def test_a_gpu_row_is_skipped_without_a_gpu(compared):
    result, _ = compared
    result.stdout.re_match_lines([r"SKIPPED \[1\] \S+: no CUDA GPU here: "])
    assert "test_cpu_smoke[gpu]" not in sftbench_section(result)


def test_a_slower_run_fails_naming_the_metric_the_change_and_the_tolerance(compared):
    result, folder = compared
    result.stdout.re_match_lines([
        r"test_cpu_smoke\[faster\]: wall-time regression$",  # a CPU has no GPU kernel clock
        # The floor or the baseline's spread; the paired test where both runs timed enough steps.
        r"\s+minutes_per_1000_samples: \S+ -> \S+ \(\+\d+\.\d%, noise band [\d.]+%(, step samples p=\S+)?\)$",
    ])
    assert summary_line(result, "faster").endswith(" -> wall-time regression")
    # The delta is the edit's (about +9900%), give or take this machine's noise.
    delta = re.search(r"minutes_per_1000_samples: \S+ -> \S+ \(\+(\d+\.\d)%", result.stdout.str()).group(1)
    assert float(delta) > 500
    # Its wall time alone regressed: measured once more, in a fresh case, both results kept, the second judged.
    assert "sftbench: test_cpu_smoke[faster]: wall time alone regressed; measuring it once more" in result.stdout.str()
    assert "measured once more, in a fresh process, it was worse again" in sftbench_section(result)
    assert (folder / "results" / "cpu" / f"{key('faster')}.2.json").is_file()


def test_a_faster_run_passes_as_an_improvement(compared):
    result, _ = compared
    assert summary_line(result, "slower").endswith(" -> improvement")
    assert "test_smoke.py::test_cpu_smoke[slower]" not in "\n".join(
        line for line in result.outlines if line.startswith("FAILED"))


def test_a_corrupt_baseline_fails_its_row_with_one_clear_message(compared):
    result, _ = compared
    text = result.stdout.str()
    assert "INTERNALERROR" not in text and "Traceback" not in text
    result.stdout.re_match_lines([rf"baseline .*{re.escape(key('corrupt'))}\.json cannot be read \(JSONDecodeError: "
                                  r".*\); restore it from git or rewrite it with --sftbench-update-baselines$"])
    assert [line.split(" - ")[0] for line in result.outlines if line.startswith("FAILED")] == [
        "FAILED test_smoke.py::test_cpu_smoke[faster]", "FAILED test_smoke.py::test_cpu_smoke[corrupt]"]


def test_pytest_benchmark_rounds_are_per_step_estimates_of_seconds_per_1000_samples(compared):
    result, folder = compared
    data = json.loads((folder / "bench.json").read_text())
    assert data["machine_info"]["sftbench"]["gpu"] == "cpu"
    assert "torch" in data["machine_info"]["sftbench"]["versions"]
    benchmarks = {b["name"]: b for b in data["benchmarks"]}
    assert {"test_cpu_smoke[fresh]", "test_cpu_smoke[slower]"} <= set(benchmarks)
    assert "test_cpu_smoke[gpu]" not in benchmarks
    for name, bench in benchmarks.items():
        row_id = name[len("test_cpu_smoke["):-1]
        # The result the row was judged on: faster, its wall time alone regressed, was measured twice (<key>.2.json).
        again = folder / "results" / "cpu" / f"{key(row_id)}.2.json"
        measured = read_result(again if again.exists() else folder / "results" / "cpu" / f"{key(row_id)}.json")
        steps = measured.timing.step_durations_s
        # One batch per sample, fewer than 16: every batch timed, then the longest and the shortest again.
        assert len(steps) == SAMPLES[row_id] + 2 * FAMILY_REPEATS
        assert bench["stats"]["rounds"] == len(steps)
        # Each round is one step's estimate of the run's seconds per 1000 samples.
        rounds = per_step_estimates(measured)
        assert bench["stats"]["min"] == pytest.approx(min(rounds), rel=1e-6)
        assert bench["stats"]["max"] == pytest.approx(max(rounds), rel=1e-6)
        assert min(rounds) <= 60 * measured.timing.minutes_per_1000_samples <= max(rounds)
        extra = bench["extra_info"]
        assert {"max_reserved_mib", "max_allocated_mib", "minutes_per_1000_samples", "tokens_per_s",
                "gpu_minutes_per_1000_samples", "gpu_busy_pct"} <= set(extra)
        assert extra["gpu_minutes_per_1000_samples"] is None  # the CPU has no GPU kernel clock
        assert extra["minutes_per_1000_samples"] == pytest.approx(measured.timing.minutes_per_1000_samples)
        assert extra["sftbench_key"] == key(row_id)
    assert sorted(p.name for p in (folder / "results" / "cpu").iterdir()) == sorted(
        [f"{key(row_id)}.json" for row_id in SAMPLES] + [f"{key('faster')}.2.json"])


def test_strict_fails_an_improvement(pytester, baselines):
    scale_wall_time(baselines / "cpu" / f"{key('slower')}.json", 100)
    result = run(pytester, "-k", "slower", "--sftbench-strict")
    result.assert_outcomes(failed=1, deselected=4)
    result.stdout.re_match_lines([
        r"test_cpu_smoke\[slower\]: improvement$",
        r"\s+minutes_per_1000_samples: \S+ -> \S+ \(-\d+\.\d%, noise band [\d.]+%(, step samples p=\S+)?\)$",
        r"\s+\(--sftbench-strict: a stale or mismatched baseline fails\)$",
    ])


# --- collection only: sharding and usage errors (in-process, no case runs) ---------------------------------------

TWIN_AND_PLAIN = '''
ROWS.append(Row(table="cpu_smoke", id="faster-twin", spec=tiny(6)))  # the same configuration as "faster"


def test_not_a_row():
    pass
'''


def collected(result) -> set[str]:
    return {line.split("::", 1)[1] for line in result.outlines if line.startswith("test_smoke.py::")}


def test_shards_split_configurations_without_overlap(pytester):
    write_module(pytester, TWIN_AND_PLAIN)
    everything = collected(pytester.runpytest_inprocess("-p", "no:cacheprovider", "--collect-only", "-q"))
    assert len(everything) == 7
    first, second = (collected(pytester.runpytest_inprocess("-p", "no:cacheprovider", "--collect-only", "-q",
                                                            "--sftbench-shard", shard)) for shard in ("1/2", "2/2"))
    assert first & second == {"test_not_a_row"}  # only the non-row test is in both
    assert (first | second) == everything
    assert first - {"test_not_a_row"} and second - {"test_not_a_row"}
    twins = {"test_cpu_smoke[faster]", "test_cpu_smoke[faster-twin]"}
    assert twins <= first or twins <= second  # a configuration's rows stay together


@pytest.mark.parametrize("shard", ["3/2", "0/2", "1", "a/b"])
def test_a_bad_shard_is_a_usage_error(pytester, shard):
    write_module(pytester)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--collect-only", "--sftbench-shard", shard)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert f"--sftbench-shard takes I/N with 1 <= I <= N, got {shard!r}" in result.stderr.str()


@pytest.mark.parametrize("value, message", [
    ("tiny-qwen={file}", "is not a folder"),
    ("tiny-qwen={missing}", "is not a folder"),
    ("tiny-qwen", "takes MODEL_TYPE=PATH"),
    ("={folder}", "takes MODEL_TYPE=PATH"),
])
def test_bad_weights_are_a_usage_error(pytester, value, message):
    write_module(pytester)
    file = pytester.makefile(".safetensors", model="not a folder")
    value = value.format(file=file, missing=pytester.path / "missing", folder=pytester.path)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--collect-only", "--sftbench-weights", value)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str() and value in result.stderr.str()


SECONDS = "number of seconds > 0 and <= 604800 (a week)"


@pytest.mark.parametrize("option, value, expected", [
    ("--sftbench-time-tolerance", "-5", "finite percentage >= 0"),
    ("--sftbench-memory-tolerance", "nan", "finite percentage >= 0"),
    ("--sftbench-gpu-time-tolerance", "inf", "finite percentage >= 0"),
    ("--sftbench-limited-gpu-time-tolerance", "-1", "finite percentage >= 0"),
    ("--sftbench-timeout", "0", SECONDS),
    ("--sftbench-timeout", "-1", SECONDS),
    ("--sftbench-timeout", "3e6", SECONDS),  # past multiprocessing's wait, which would fail every row
    ("--sftbench-timeout", "inf", SECONDS),
])
def test_bad_tolerances_and_timeouts_are_usage_errors(pytester, option, value, expected):
    write_module(pytester)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--collect-only", f"{option}={value}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert f"argument {option}: invalid {expected} value: '{value}'" in result.stderr.str()


def test_a_timeout_of_a_week_is_accepted(pytester):
    write_module(pytester)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--collect-only", "--sftbench-timeout=604800")
    assert result.ret == pytest.ExitCode.OK


@pytest.mark.parametrize("results", ["baselines", "baselines/cpu", "."])
def test_results_and_baselines_may_not_share_a_folder(pytester, results):
    write_module(pytester)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--collect-only", "--sftbench-baselines",
                                          "baselines", "--sftbench-results", results)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "overlap: results would overwrite or mix with baselines; give them separate folders" in result.stderr.str()


def test_a_missing_baselines_folder_stops_a_comparing_run_before_training(pytester):
    write_module(pytester)
    result = run(pytester, "-k", "fresh", baselines=pytester.path / "typo")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stdout.re_match_lines([rf".*sftbench: no baselines folder {re.escape(str(pytester.path / 'typo'))}: give "
                                  r"the right --sftbench-baselines \(it is created only by --sftbench-update-baselines\)"])
    assert "launcher" not in result.stdout.str() and not (pytester.path / "results").exists()


def test_the_rows_run_with_pytest_benchmark_disabled(pytester):
    write_module(pytester)
    (pytester.path / "baselines").mkdir()
    result = run(pytester, "-k", "fresh", "-p", "no:benchmark")
    result.assert_outcomes(passed=1, deselected=4)
    assert summary_line(result, "fresh").endswith(" -> no-baseline")


def test_a_failed_benchmark_compare_fail_is_one_line_and_a_failed_run(pytester):
    write_module(pytester)
    # pytest-benchmark's --benchmark-compare-fail raises this from its terminal summary after listing the regressions.
    pytester.makeconftest("""
from pytest_benchmark.session import PerformanceRegression


def pytest_terminal_summary():
    raise PerformanceRegression("Performance has regressed.")
""")
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--collect-only")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["sftbench: --benchmark-compare-fail: the benchmarks listed above regressed"])
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


# --- pytest-xdist: a GPU per worker, one summary, one run record, pytest-benchmark's data -------------------------

def test_n_distributes_whole_configurations_by_default(pytester):
    write_module(pytester, TWIN_AND_PLAIN)
    items, _ = pytester.inline_genitems("-p", "no:cacheprovider", "-n", "2")
    assert items[0].config.option.dist == "loadgroup"
    groups = {item.name: [m.args[0] for m in item.iter_markers("xdist_group")] for item in items}
    assert groups["test_cpu_smoke[faster]"] == groups["test_cpu_smoke[faster-twin]"] == [key("faster")]
    assert groups["test_not_a_row"] == []


def test_more_workers_than_gpus_is_a_usage_error(pytester, monkeypatch):
    write_module(pytester)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--collect-only", "-n", "2")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "-n 2: this host has 1 GPU(s) (0) and each pytest-xdist worker measures on a GPU of its own" \
        in result.stderr.str()


def test_workers_train_a_configuration_shown_in_two_tables_once(pytester):
    write_module(pytester, extra=AGAIN)
    result = run(pytester, "-n", "2", "-v", "-k", "faster or slower", "--sftbench-update-baselines")
    result.assert_outcomes(passed=4)
    for row_id in ("faster", "slower"):  # each configuration is one xdist group, trained by one worker
        running = re.findall(rf"sftbench: running test_(?:cpu_smoke|again)\[{row_id}\] ", result.stderr.str())
        assert len(running) == 1, result.stderr.str()
        # The workers' node ids name the group (which the scheduler reads), not only the controller's marks.
        for test in ("test_cpu_smoke", "test_again"):
            result.stdout.fnmatch_lines([f"*PASSED*::{test}[[]{row_id}[]]@{key(row_id)}*"])
    section = sftbench_section(result)  # one entry per configuration, its other row named under it
    assert section.count("the same configuration: test_") == 2 and section.count("baseline written: ") == 2


def test_a_crashed_worker_is_named_with_what_the_summary_and_record_lack(pytester):
    write_module(pytester, extra=CRASH)
    result = run(pytester, "-n", "2", "-k", "test_crash or slower", "--sftbench-update-baselines",
                 "--max-worker-restart", "0")
    section = sftbench_section(result)
    [lost] = [line for line in section.splitlines() if "ended without its report" in line]
    assert re.fullmatch(r"pytest-xdist worker gw[01] ended without its report \(it crashed\): the configurations it "
                        r"finished are missing from this summary and the run record; their results: .*/results/", lost)
    [record] = (pytester.path / "results" / "history").iterdir()
    assert json.loads(record.read_text())["record"]["lost_parts"] == [lost.split(" ended")[0]]


def test_rows_carry_their_configurations_xdist_group_before_any_collection_hook_reads_it(pytester):
    write_module(pytester, extra=AGAIN)
    pytester.makeconftest("""
def pytest_collection_modifyitems(items):  # where pytest-xdist's worker reads the marks (no tryfirst/trylast)
    for item in items:
        mark = item.get_closest_marker("xdist_group")
        print("GROUP", item.name, mark.args[0] if mark else None)
""")
    result = pytester.runpytest("--collect-only", "-s", "-p", "no:cacheprovider", "-k", "faster")
    for name in ("test_again", "test_cpu_smoke"):
        result.stdout.fnmatch_lines([f"GROUP {name}[[]faster[]] {key('faster')}"])


def test_workers_report_one_summary_one_run_record_and_their_benchmarks(pytester, baselines):
    history = pytester.path / "results" / "history"
    before = set(history.iterdir()) if history.is_dir() else set()  # the update run's, where it ran here
    result = run(pytester, "-n", "2", "--sftbench-require-baseline", "--sftbench-time-tolerance", "1e9",
                 "--benchmark-json", "bench.json")
    result.assert_outcomes(passed=3, failed=1, skipped=1)
    text = result.stdout.str()
    assert len(re.findall(r"^=+ sftbench =+$", text, re.M)) == 1
    for row_id in SAMPLES:
        summary_line(result, row_id)
    counts = sftbench_section(result).splitlines()
    assert sorted(next(line for line in counts if line.endswith(" skipped")).split(", ")) == [
        "1 no-baseline", "1 skipped", "3 pass"]
    result.stdout.re_match_lines([rf".*test_cpu_smoke\[fresh\]: no baseline .*{re.escape(key('fresh'))}\.json "
                                  r"\(--sftbench-require-baseline\)"])
    assert "Benchmarks are automatically disabled" not in text + result.stderr.str()
    assert re.search(r"^\[gw[01]\] sftbench: running test_cpu_smoke\[fresh\]", result.stderr.str(), re.M)
    [record] = set(history.iterdir()) - before
    assert sorted(c["key"] for c in json.loads(record.read_text())["record"]["configurations"]) == sorted(
        map(key, SAMPLES))
    assert f"run record: {record}" in sftbench_section(result).splitlines()  # its own line, not after [100%]
    benchmarks = json.loads((pytester.path / "bench.json").read_text())["benchmarks"]
    assert sorted((b["fullname"], b["stats"]["rounds"]) for b in benchmarks) == sorted(
        (f"test_smoke.py::test_cpu_smoke[{row_id}]", n + 2 * FAMILY_REPEATS) for row_id, n in SAMPLES.items())
