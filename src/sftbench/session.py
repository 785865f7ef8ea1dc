"""One pytest run of sftbench: the runner's outcomes as pytest results and pytest-benchmark stats.

The run flow itself (skip, train once, write or compare baselines) is sftbench.runner's; this module
replays a case's measured step times into pytest-benchmark and turns each RowOutcome into pass, fail
or skip.
"""

from __future__ import annotations

import pytest

from sftbench.catalog import Row
from sftbench.result import Result
from sftbench.runner import RunConfig, Runner, RunRefused


class ReplayClock:
    """A pytest-benchmark timer that replays step durations measured in the case's process.

    pytest-benchmark times a target between two timer() calls; this clock makes each round's
    interval one measured step, so its stats, --benchmark-autosave and --benchmark-compare work on
    the real step times.
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


class BenchSession:
    def __init__(self, config: RunConfig, write_line=print):
        self.runner = Runner(config, log=write_line)
        self.clock = ReplayClock()

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
            "minutes_per_1000_samples": result.minutes_per_1000_samples, "tokens_per_s": result.tokens_per_s,
            "max_reserved_mib": result.memory.max_reserved_mib,
            "max_allocated_mib": result.memory.max_allocated_mib, "nvml_peak_mib": result.memory.nvml_peak_mib,
            "trainable_params": result.trainable_params, "seed_minutes": row.seed_minutes,
            "seed_memory_mib": row.seed_memory_mib, "seed_outcome": row.seed_outcome,
        })
        if not result.step_durations_s:  # an OOM or error has no steps to time
            return
        self.clock.load(result.step_durations_s)
        benchmark.pedantic(_step, rounds=len(result.step_durations_s), iterations=1)

    def summary_lines(self, skipped: int = 0) -> list[str]:
        return self.runner.summary_lines(skipped)


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
