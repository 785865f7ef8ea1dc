"""One pytest run of sftbench: the runner's outcomes as pytest results and pytest-benchmark stats, and the run's
record and summary.

The run flow itself (skip, train once, write or compare baselines) is sftbench.runner's, the run record
sftbench.recorder's; this module starts and finishes them with pytest's session (a SIGTERM ends the run as
Ctrl-C does, so its record says it was interrupted), replays a case's measured steps into pytest-benchmark
and turns each RowOutcome into pass, fail or skip.

pytest-benchmark's rounds are repeats of one quantity, the run's seconds per 1000 samples: each timed
step's duration over the duration expected at its token count, times the epoch projection
(`per_step_estimates`). Its median is then the quantity sftbench's wall-time verdict compares, and
the rounds' spread is the run's noise rather than the spread of its batch sizes.

Under pytest-xdist, pytest-benchmark disables itself in every process; a worker keeps its rows'
rounds as plain data, and the controller replays them into its own pytest-benchmark session, so
--benchmark-json, --benchmark-autosave and --benchmark-compare see every row.
"""

from __future__ import annotations

import json
import signal
import warnings
from pathlib import Path

import numpy as np
import pytest
from pytest_benchmark.fixture import BenchmarkFixture
from pytest_benchmark.session import PerformanceRegression
from pytest_benchmark.utils import NameWrapper, safe_dumps

from sftbench import render
from sftbench.catalog import Row
from sftbench.recorder import Recorder
from sftbench.result import Result
from sftbench.runner import RunConfig, Runner, RunRefused


class ReplayClock:
    """A pytest-benchmark timer that replays given round durations (`per_step_estimates`).

    pytest-benchmark times a target between two timer() calls; this clock makes each round's
    interval one given duration, so its stats, --benchmark-autosave and --benchmark-compare work on
    what the case's process measured.
    """

    __name__ = "replayed_step_durations"

    def __init__(self):
        self._ticks = iter(())

    def load(self, durations: list[float]) -> None:
        self._ticks = self._cumulative(durations)

    @staticmethod
    def _cumulative(durations):
        elapsed = 0.0
        for duration in durations:
            yield elapsed
            elapsed += duration
            yield elapsed

    def __call__(self) -> float:
        return next(self._ticks)


def per_step_estimates(result: Result) -> list[float]:
    """Seconds per 1000 samples, estimated from each timed step alone.

    Steps differ in batch size, so their durations spread with the batch sizes. Each step's duration is
    divided by the duration expected at its token count and multiplied by the epoch projection in seconds
    per 1000 samples: every estimate is of the same quantity and their spread is the run's noise. The
    expected duration is a least-squares fit of step time over tokens, quadratic (attention grows with the
    square of the length): the projection's own interpolation passes through every timed step of a quick
    run (one step per batch size) and would leave no spread.
    """
    tokens, durations = np.asarray(result.timing.step_tokens, float), np.asarray(result.timing.step_durations_s)
    degree = min(2, len(set(result.timing.step_tokens)) - 1)
    expected = np.polyval(np.polyfit(tokens, durations, degree), tokens)
    return [float(x) for x in 60 * result.timing.minutes_per_1000_samples * durations / expected]


class BenchSession:
    def __init__(self, config: RunConfig, write_line=print):
        self.runner = Runner(config, log=write_line)
        self.recorder = Recorder(self.runner)
        self.clock = ReplayClock()
        self.worker_benchmarks: list[dict] = []  # a pytest-xdist worker's rounds, for the controller to replay
        self.record_path: Path | None = None  # the run record, once written at the end of the session
        self.pytest_session = None  # pytest's session, from its start (plugin.pytest_sessionstart)
        self._sigterm = None  # the handler SIGTERM had before the run
        self.final_record = None  # the run record, once the session has ended

    @property
    def is_worker(self) -> bool:
        return self.runner.config.worker is not None

    def start(self, pytest_session) -> None:
        """At pytest's session start: a SIGTERM ends the run as Ctrl-C does (the run's knobs, folders and locks are
        checked at its first row, before anything trains: a pytest session without rows holds nothing)."""
        self.pytest_session = pytest_session
        if not self.is_worker:
            self._sigterm = signal.signal(signal.SIGTERM, _interrupt)

    def finish(self, exitstatus) -> None:
        """At pytest's session end: cases ended, folders let go; a worker hands its part over, the run writes its
        record (marked interrupted where pytest was)."""
        self.runner.close()
        if self._sigterm is not None:
            signal.signal(signal.SIGTERM, self._sigterm)
        if not self.is_worker:
            self.final_record = self.recorder.record(interrupted=exitstatus == pytest.ExitCode.INTERRUPTED)
            self.record_path = self.recorder.write(self.final_record)

    def check(self, row: Row, benchmark) -> None:
        """The body of every benchmark test."""
        try:
            outcome = self.runner.check(row)
        except RunRefused as error:  # nothing can be measured or kept: the run stops here
            pytest.exit(str(error), returncode=pytest.ExitCode.USAGE_ERROR)
        if outcome.result is not None:
            self._feed_benchmark(benchmark, row, outcome.result)
        if outcome.action == "fail":
            pytest.fail(outcome.message, pytrace=False)
        if outcome.action == "skip":
            pytest.skip(outcome.message)

    def _feed_benchmark(self, benchmark, row: Row, result: Result) -> None:
        benchmark.extra_info.update({
            "sftbench_key": result.key, "outcome": result.outcome, "attention": result.attention,
            "minutes_per_1000_samples": result.timing.minutes_per_1000_samples,
            "tokens_per_s": result.timing.tokens_per_s,
            "gpu_minutes_per_1000_samples": result.kernels.gpu_minutes_per_1000_samples,
            "gpu_busy_pct": result.kernels.busy_pct, "gpu_minutes_by_family": result.kernels.gpu_minutes_by_family,
            "max_reserved_mib": result.memory.max_reserved_mib, "max_allocated_mib": result.memory.max_allocated_mib,
            "nvml_peak_mib": result.memory.nvml_peak_mib, "trainable_params": result.trainable_params,
            "seed_minutes": row.seed_minutes, "seed_memory_mib": row.seed_memory_mib, "seed_outcome": row.seed_outcome,
        })
        if not result.timing.step_durations_s:  # an OOM or error has no steps to time
            return
        rounds = per_step_estimates(result)
        if self.runner.config.worker is not None and getattr(benchmark, "disabled", False):
            self.worker_benchmarks.append(_benchmark_entry(benchmark, row.spec.key, rounds))
            return
        self.clock.load(rounds)
        benchmark.pedantic(_step, rounds=len(rounds), iterations=1)

    def part(self) -> dict:
        """What a pytest-xdist worker sends the controller, as plain data: its configurations and its rounds."""
        return {"configurations": self.recorder.part(), "benchmarks": self.worker_benchmarks}

    def merge(self, part: dict, benchmark_session=None) -> None:
        """On the controller: add a worker's `part()` to the summary and the run record, and its rounds to
        pytest-benchmark's session (unless --benchmark-disable)."""
        self.recorder.merge(part["configurations"])
        if benchmark_session is None or (benchmark_session.config.getoption("benchmark_disable")
                                         and not benchmark_session.config.getoption("benchmark_enable")):
            return
        for entry in part["benchmarks"]:
            self._replay(entry, self.pytest_session, benchmark_session)

    def _replay(self, entry: dict, pytest_session, benchmark_session) -> None:
        """The worker's rounds through a pytest-benchmark fixture of the controller, as one process replays them.

        The controller of pytest-xdist collects no test items, so the fixture is made for its pytest session
        (a real node) and then named as the worker's row, through the attributes pytest-benchmark's JSON is
        written from."""
        fixture = BenchmarkFixture(pytest_session, add_stats=benchmark_session.benchmarks.append,
                                   logger=benchmark_session.logger, warner=warnings.warn, disabled=False,
                                   **dict(benchmark_session.options, timer=NameWrapper(self.clock),
                                          group=entry["group"]))
        fixture.name, fixture.fullname, fixture.param, fixture.params = (
            entry["name"], entry["fullname"], entry["param"], entry["params"])
        fixture.extra_info.update(entry["extra_info"])
        self.clock.load(entry["rounds"])
        fixture.pedantic(_step, rounds=len(entry["rounds"]), iterations=1)

    def lose(self, name: str) -> None:
        self.recorder.lose(name)

    def summary_lines(self, skipped: int = 0) -> list[str]:
        """The `sftbench` section's lines, and the run record's path; none where the run checked nothing."""
        record = self.final_record or self.recorder.record()
        if not (record.configurations or skipped or record.lost_parts or record.interrupted):
            return []
        results = self.runner.config.results_dir
        lines = render.run_summary(record, skipped, f"{results}/" if results is not None else "no results folder")
        return lines + ([f"run record: {self.record_path}"] if self.record_path is not None else [])


def _benchmark_entry(benchmark, key: str, rounds: list[float]) -> dict:
    """A worker's row for pytest-benchmark, as plain data; named as in one process (without pytest-xdist's
    `@<group>` suffix on the test id), its params as pytest-benchmark's JSON writes them."""
    return {"name": benchmark.name, "fullname": benchmark.fullname.removesuffix(f"@{key}"),
            "param": benchmark.param, "params": json.loads(safe_dumps(benchmark.params)), "group": benchmark.group,
            "extra_info": benchmark.extra_info, "rounds": rounds}


class CompareFailVerdict:
    """A failed --benchmark-compare-fail as a failed run with one line: pytest-benchmark raises
    PerformanceRegression from its terminal summary, a long traceback, after listing what regressed."""

    def pytest_sessionstart(self, session):
        self.session = session

    @pytest.hookimpl(wrapper=True)
    def pytest_terminal_summary(self, terminalreporter):
        try:
            return (yield)
        except PerformanceRegression:
            terminalreporter.write_line("sftbench: --benchmark-compare-fail: the benchmarks listed above regressed",
                                        red=True, bold=True)
            self.session.exitstatus = pytest.ExitCode.TESTS_FAILED


class BenchmarkStandIn:
    """The `benchmark` fixture where pytest-benchmark is disabled (-p no:benchmark): the rows still run and
    are compared with their baselines; their step times are just not handed to pytest-benchmark."""

    class Benchmark:
        def __init__(self):
            self.extra_info: dict = {}

        def pedantic(self, target, rounds: int, iterations: int) -> None:
            """Nothing to replay the steps into."""

    @pytest.fixture
    def benchmark(self):
        return self.Benchmark()


def _step() -> None:
    """The benchmark target: the work happened in the case's process; ReplayClock supplies its times."""


def _interrupt(signum, frame) -> None:
    """SIGTERM as Ctrl-C: pytest ends the session, its record written and marked interrupted."""
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")
