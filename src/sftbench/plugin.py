"""sftbench's pytest plugin: options, hooks and the `check_row` fixture; the work is in session.py."""

from __future__ import annotations

import contextlib
import math
import sys
import warnings
from pathlib import Path

import pytest
from pytest_benchmark.logger import PytestBenchmarkWarning

from sftbench import environment, xdist_workers
from sftbench.catalog import CatalogError, Row, Table, all_rows
from sftbench.launcher import DEFAULT_TIMEOUT_S, MAX_TIMEOUT_S, STARTUP_TIMEOUT_S
from sftbench.runner import RunConfig
from sftbench.session import BenchmarkStandIn, BenchSession, CompareFailVerdict
from sftbench.spec import RunOptions
from sftbench.verdicts import (
    DEFAULT_FAMILY_TOLERANCE_PCT,
    DEFAULT_GPU_TIME_TOLERANCE_PCT,
    DEFAULT_LIMITED_GPU_TIME_TOLERANCE_PCT,
    DEFAULT_MEMORY_TOLERANCE_PCT,
    DEFAULT_OTHER_GPU_FAMILY_TOLERANCE_PCT,
    DEFAULT_TIME_TOLERANCE_PCT,
    Tolerances,
)

SESSION = pytest.StashKey[BenchSession]()
USER_TABLES = pytest.StashKey[tuple[Table, ...]]()  # the tables of --sftbench-catalog
USER_ROWS_MARK = "sftbench_user_rows"  # on the test function whose cases are the user catalogs' rows


def pytest_addoption(parser):
    group = parser.getgroup("sftbench", "sftbench: fine-tuning speed and memory regressions")
    group.addoption("--sftbench-update-baselines", action="store_true",
                    help="write this run's results as the baselines of this GPU (atomically) instead of comparing")
    group.addoption("--sftbench-strict", action="store_true",
                    help="also fail on improvements beyond tolerance (a stale baseline) and on baselines "
                         "measured with another attention kernel or quantization backend")
    group.addoption("--sftbench-full-epoch", action="store_true",
                    help="train all 1000 samples instead of timing representative steps and projecting")
    group.addoption("--sftbench-attn-fallback", choices=("sdpa", "eager"), default=None,
                    help="attention kernel for use_flash_attn rows where flash-attn is not installed "
                         "(default: skip those rows)")
    group.addoption("--sftbench-gpu-time-tolerance", type=_percent, default=DEFAULT_GPU_TIME_TOLERANCE_PCT,
                    metavar="PCT", help="allowed growth of GPU kernel time in %% before a case fails "
                                        "(default %(default)s)")
    group.addoption("--sftbench-limited-gpu-time-tolerance", type=_percent,
                    default=DEFAULT_LIMITED_GPU_TIME_TOLERANCE_PCT, metavar="PCT",
                    help="allowed growth of GPU kernel time in %% where the GPU held its clock down (power cap, "
                         "thermal) in either run's traced steps and the two runs used different GPUs "
                         "(default %(default)s)")
    group.addoption("--sftbench-family-tolerance", type=_percent, default=DEFAULT_FAMILY_TOLERANCE_PCT,
                    metavar="PCT", help="allowed growth in %% of a GPU kernel family's time against the GPU's pace in "
                                        "the other families, against a baseline of the same GPU; a family whose own "
                                        "repeats spread more is judged by its noise (default %(default)s)")
    group.addoption("--sftbench-other-gpu-family-tolerance", type=_percent,
                    default=DEFAULT_OTHER_GPU_FAMILY_TOLERANCE_PCT, metavar="PCT",
                    help="the same against a baseline of another GPU of the model (default %(default)s)")
    group.addoption("--sftbench-time-tolerance", type=_percent, default=DEFAULT_TIME_TOLERANCE_PCT, metavar="PCT",
                    help="wall time: the least noise band in %%; a slow-down beyond it (or the baseline's own "
                         "spread, if larger) that the step samples also show fails (default %(default)s)")
    group.addoption("--sftbench-no-remeasure", action="store_true",
                    help="fail a configuration whose wall time alone regressed on its first measurement (by default "
                         "it runs once more, in a fresh process, and its rows fail only if the second regresses too)")
    group.addoption("--sftbench-memory-tolerance", type=_percent, default=DEFAULT_MEMORY_TOLERANCE_PCT, metavar="PCT",
                    help="allowed memory growth in %% before a case fails (default %(default)s)")
    group.addoption("--sftbench-baselines", default=None, metavar="DIR",
                    help="baselines folder (default: <rootdir>/baselines)")
    group.addoption("--sftbench-results", default=None, metavar="DIR",
                    help="where each case's result JSON is written (default: <rootdir>/results)")
    group.addoption("--sftbench-weights", action="append", default=[], metavar="MODEL_TYPE=PATH",
                    help="train MODEL_TYPE's bf16 rows from a local checkpoint folder instead of random weights "
                         "(repeatable)")
    group.addoption("--sftbench-catalog", action="append", default=[], metavar="FILE",
                    help="also run the rows of this catalog of your own (catalog.toml's shape; models by their "
                         "config.json), as cases of test_user_rows (repeatable)")
    group.addoption("--sftbench-shard", default=None, metavar="I/N",
                    help="run only the I-th of N parts of the selected configurations (1-based)")
    group.addoption("--sftbench-require-baseline", action="store_true",
                    help="fail a row whose configuration has no baseline (instead of passing it as no-baseline)")
    group.addoption("--sftbench-timeout", type=_seconds, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                    help="per-case limit, from the case's start, before its process is killed (default "
                         f"%(default)s; at most a week, {MAX_TIMEOUT_S:.0f}); the case launcher's start-up (its "
                         f"imports, once) waits up to {STARTUP_TIMEOUT_S:g} s whatever this is")


def _percent(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(text)
    return value


_percent.__name__ = "finite percentage >= 0"  # how argparse names a value it refuses


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 < value <= MAX_TIMEOUT_S:  # nan and inf too
        raise ValueError(text)
    return value


_seconds.__name__ = f"number of seconds > 0 and <= {MAX_TIMEOUT_S:.0f} (a week)"


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's, for -n auto
def pytest_xdist_auto_num_workers(config):
    """`-n auto`: a worker per GPU the run sees; without GPUs, pytest-xdist's own count (None)."""
    return len(xdist_workers.visible_gpus()) or None


@pytest.hookimpl(wrapper=True)  # around pytest-xdist's own, which turns an unset --dist into "load"
def pytest_cmdline_main(config):
    xdist_workers.default_to_loadgroup(config.option)
    return (yield)


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's, on the controller as it starts each worker
def pytest_configure_node(node):
    xdist_workers.pass_loadgroup(node.config, node.workerinput)


def pytest_configure(config):
    config.addinivalue_line("markers", "sftbench: a seed row trained and compared with its baseline")
    config.addinivalue_line("markers", f"{USER_ROWS_MARK}: the test function whose cases are the rows of "
                                       "--sftbench-catalog")
    if not config.pluginmanager.has_plugin("xdist"):
        config.addinivalue_line("markers", "xdist_group: pytest-xdist's marker, unused without it")
    # pytest-benchmark turns itself off under pytest-xdist and says so; sftbench's rows still reach it (session.py).
    warnings.filterwarnings("ignore", "Benchmarks are automatically disabled because xdist", PytestBenchmarkWarning)
    if hasattr(config, "workerinput"):
        xdist_workers.take_loadgroup(config)
        xdist_workers.pin_worker()
    elif getattr(config.option, "dist", "no") != "no":
        xdist_workers.check_worker_count(len(config.option.tx))
    if not config.pluginmanager.has_plugin("benchmark"):  # -p no:benchmark
        config.addinivalue_line("markers", "benchmark: pytest-benchmark's marker, unused while it is disabled")
        config.pluginmanager.register(BenchmarkStandIn(), "sftbench-benchmark-stand-in")
    else:
        config.pluginmanager.register(CompareFailVerdict(), "sftbench-compare-fail-verdict")
    root = Path(config.rootpath)
    config.stash[USER_TABLES] = _user_tables(config.getoption("sftbench_catalog"))
    user_rows = [row for t in config.stash[USER_TABLES] for row in t.rows]
    weights = tuple(_parse_weights(config.getoption("sftbench_weights"), all_rows() + user_rows))
    baselines = Path(config.getoption("sftbench_baselines") or root / "baselines")
    results = Path(config.getoption("sftbench_results") or root / "results")
    if _nested(baselines, results):
        raise pytest.UsageError(f"--sftbench-results {results} and --sftbench-baselines {baselines} overlap: results "
                                "would overwrite or mix with baselines; give them separate folders")
    worker = getattr(config, "workerinput", {})  # pytest-xdist's, in a worker
    options = RunConfig(
        baselines_dir=baselines, results_dir=results,
        update_baselines=config.getoption("sftbench_update_baselines"),
        strict=config.getoption("sftbench_strict"),
        require_baseline=config.getoption("sftbench_require_baseline"),
        remeasure=not config.getoption("sftbench_no_remeasure"),
        run=RunOptions(full_epoch=config.getoption("sftbench_full_epoch"),
                       attn_fallback=config.getoption("sftbench_attn_fallback")),
        tolerances=Tolerances(gpu_time_pct=config.getoption("sftbench_gpu_time_tolerance"),
                              time_pct=config.getoption("sftbench_time_tolerance"),
                              memory_pct=config.getoption("sftbench_memory_tolerance"),
                              limited_gpu_time_pct=config.getoption("sftbench_limited_gpu_time_tolerance"),
                              family_pct=config.getoption("sftbench_family_tolerance"),
                              other_gpu_family_pct=config.getoption("sftbench_other_gpu_family_tolerance")),
        weights=weights, timeout_s=config.getoption("sftbench_timeout"), shard=config.getoption("sftbench_shard"),
        worker=worker.get("workerid"), run_id=worker.get("testrunuid"))
    config.stash[SESSION] = BenchSession(options, write_line=lambda line: _write_line(config, line))


def _nested(a: Path, b: Path) -> bool:
    a, b = a.resolve(), b.resolve()
    return a == b or a in b.parents or b in a.parents


def _user_tables(paths: list[str]) -> tuple[Table, ...]:
    if not paths:
        return ()
    # Imported here: it imports torch and transformers, which a run without user rows never needs in this process.
    from sftbench import user_catalog

    try:
        return user_catalog.load(paths)
    except CatalogError as error:
        raise pytest.UsageError(f"--sftbench-catalog {error}") from None


def _parse_weights(values: list[str], rows: list[Row]):
    known = sorted({row.spec.model_type for row in rows})
    for value in values:
        model_type, sep, path = value.partition("=")
        if not sep or not model_type or not path:
            raise pytest.UsageError(f"--sftbench-weights takes MODEL_TYPE=PATH, got {value!r}")
        if model_type not in known:
            raise pytest.UsageError(f"--sftbench-weights: unknown model type {model_type!r}; "
                                    f"the catalog has {', '.join(known)}")
        if not Path(path).is_dir():
            raise pytest.UsageError(f"--sftbench-weights {value}: {path} is not a folder")
        yield model_type, path


def _write_line(config, line: str) -> None:
    """A progress line on the terminal at once, also while a test's output is captured (without -s). A
    pytest-xdist worker's terminal is not shown; its stderr is, so its lines go there, named by the worker."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    worker = getattr(config, "workerinput", {}).get("workerid")
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        if worker is not None:
            print(f"[{worker}] {line}", file=sys.stderr, flush=True)
        elif reporter is not None:
            reporter.write_line(line)
            reporter.flush()


def pytest_generate_tests(metafunc):
    """The user catalogs' rows as the cases of the function marked USER_ROWS_MARK (tests/benchmarks)."""
    if metafunc.definition.get_closest_marker(USER_ROWS_MARK):
        rows = [row for t in metafunc.config.stash[USER_TABLES] for row in t.rows]
        metafunc.parametrize("row", rows, ids=lambda row: row.id)


@pytest.hookimpl(wrapper=True)
def pytest_pycollect_makeitem(collector, name, obj):
    """Without user rows their function collects nothing (pytest would collect it once, skipped for its empty
    parameter set)."""
    items = yield
    if isinstance(items, list) and not any(t.rows for t in collector.config.stash[USER_TABLES]):
        items = [item for item in items if not item.get_closest_marker(USER_ROWS_MARK)]
    return items


def pytest_itemcollected(item):
    """Marks on each benchmark row as it is collected: before any pytest_collection_modifyitems, among them
    pytest-xdist's, which reads the xdist_group marks when a worker collects."""
    if "check_row" not in getattr(item, "fixturenames", ()):
        return
    # Our clock replays the case's per-step estimates (session.per_step_estimates) into pytest-benchmark's stats.
    item.add_marker(pytest.mark.benchmark(timer=item.config.stash[SESSION].clock, group=item.originalname))
    item.add_marker(pytest.mark.sftbench)
    # pytest-xdist's loadgroup keeps a configuration's rows in one worker, so it trains once.
    row = getattr(item, "callspec", None) and item.callspec.params.get("row")
    if row is not None:
        item.add_marker(pytest.mark.xdist_group(row.spec.key))
    # An OOM has no steps to time, so pytest-benchmark sees its fixture unused: expected, not a warning.
    item.add_marker(pytest.mark.filterwarnings("ignore:Benchmark fixture was not used"))


@pytest.hookimpl(trylast=True)  # after -k / -m deselection and pytest-xdist's grouping in a worker
def pytest_collection_modifyitems(config, items):
    if hasattr(config, "workerinput") and config.getvalue("loadgroup"):
        xdist_workers.keep_groups_in_node_ids(items)
    rows = [item for item in items if "check_row" in getattr(item, "fixturenames", ())]
    shard = config.getoption("sftbench_shard")
    if shard:
        keep = shard_keys([item.callspec.params["row"] for item in rows], shard)
        deselected = [item for item in rows if item.callspec.params["row"].spec.key not in keep]
        if deselected:
            config.hook.pytest_deselected(items=deselected)
            items[:] = [item for item in items if item not in deselected]


def shard_keys(rows: list[Row], shard: str) -> set[str]:
    """The configurations of the I-th of N parts (a configuration's rows stay together).

    Parts are balanced by the seed's minutes (a 72B row costs ~14 7B rows): the longest configuration
    goes to the part with the least work so far. Rows without seed minutes (the seed's OOMs) count as
    the median. Deterministic, so N processes that each compute their own part split the work exactly.
    """
    try:
        index, count = (int(part) for part in shard.split("/"))
        if not 1 <= index <= count:
            raise ValueError
    except ValueError:
        raise pytest.UsageError(f"--sftbench-shard takes I/N with 1 <= I <= N, got {shard!r}") from None
    minutes: dict[str, list[float]] = {}
    for row in rows:
        seed = minutes.setdefault(row.spec.key, [])
        if row.seed_minutes:
            seed.append(row.seed_minutes)
    known = sorted(max(m) for m in minutes.values() if m)
    fallback = known[len(known) // 2] if known else 1.0
    cost = {key: max(m, default=fallback) for key, m in minutes.items()}
    parts: list[tuple[float, int, set[str]]] = [(0.0, i, set()) for i in range(count)]
    for key in sorted(cost, key=lambda k: (-cost[k], k)):
        load, i, keys = min(parts)
        keys.add(key)
        parts[i] = (load + cost[key], i, keys)
    return parts[index - 1][2]


@pytest.fixture
def check_row(request, benchmark):
    """Call with a catalog Row: trains it (once per run), records it and checks it against its baseline."""
    session = request.config.stash[SESSION]

    def check(row: Row) -> None:
        session.check(row, benchmark)

    return check


@pytest.hookimpl(optionalhook=True)  # pytest -p no:benchmark must still work
def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["sftbench"] = {**environment.machine(), "versions": environment.package_versions()}


def pytest_sessionstart(session):
    session.config.stash[SESSION].start(session)


def pytest_sessionfinish(session, exitstatus):
    bench = session.config.stash[SESSION]
    bench.finish(exitstatus)
    if hasattr(session.config, "workeroutput"):  # a pytest-xdist worker: the controller reports and records
        session.config.workeroutput["sftbench"] = bench.part()


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook, on the controller as each worker ends
def pytest_testnodedown(node, error):
    bench = node.config.stash[SESSION]
    part = getattr(node, "workeroutput", {}).get("sftbench")
    if part is not None:
        bench.merge(part, getattr(node.config, "_benchmarksession", None))
    else:  # the worker died before its pytest_sessionfinish
        bench.lose(f"pytest-xdist worker {node.gateway.id}")


def pytest_terminal_summary(terminalreporter, config):
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if "sftbench" in getattr(r, "keywords", {})]
    lines = config.stash[SESSION].summary_lines(skipped=len(skipped))
    if lines:
        terminalreporter.section("sftbench")
        for line in lines:
            terminalreporter.write_line(line)
