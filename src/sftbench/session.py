"""One pytest run of sftbench: runs each configuration once, checks each row against its baseline.

The flow of a row: skip if this machine cannot run it (saying why) -> the configuration's Result
(trained once per run, however many tables show it) -> its step durations become the row's
pytest-benchmark stats -> compare with the stored baseline -> pass, fail with an explanation, or skip.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from sftbench import environment
from sftbench.baselines import BaselineError, BaselineStore, Comparison, Tolerances, compare
from sftbench.catalog import Row, rows_of
from sftbench.environment import gpu_slug
from sftbench.launcher import DEFAULT_TIMEOUT_S, Launcher
from sftbench.result import Result
from sftbench.spec import CaseSpec, RunOptions


@dataclass(frozen=True)
class SessionOptions:
    baselines_dir: Path
    results_dir: Path | None
    update_baselines: bool = False
    strict: bool = False
    run: RunOptions = RunOptions()
    tolerances: Tolerances = Tolerances()
    weights: tuple[tuple[str, str], ...] = ()  # (model_type, local checkpoint folder)
    timeout_s: float = DEFAULT_TIMEOUT_S


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


@dataclass
class RowReport:
    row: Row
    result: Result
    comparison: Comparison | None  # None when the run wrote the baseline
    note: str = ""


class BenchSession:
    def __init__(self, options: SessionOptions, write_line=print):
        self.options = options
        self.write_line = write_line
        self.clock = ReplayClock()
        self.store = BaselineStore(options.baselines_dir)
        self.results: dict[CaseSpec, Result] = {}
        self.reports: list[RowReport] = []
        self._written: set[CaseSpec] = set()
        self._launcher: Launcher | None = None

    @property
    def gpu(self) -> str:
        return str(environment.gpu_info()["gpu"])

    def spec_for(self, row: Row) -> CaseSpec:
        weights = dict(self.options.weights).get(row.spec.model_type)
        # Quantized rows keep their synthetic quantized weights (spec.py refuses a checkpoint for them).
        return row.spec.replace(weights_path=weights) if weights and row.spec.quantization == "bf16" else row.spec

    def skip_reason(self, spec: CaseSpec) -> str | None:
        return cannot_run(spec, self.options.run.attn_fallback)

    def result_for(self, spec: CaseSpec, label: str) -> Result:
        if spec not in self.results:
            if self._launcher is None:
                self._launcher = Launcher(self.options.timeout_s, log=self.write_line)
                self.write_line("sftbench: starting the case launcher (imports torch, transformers, peft once)")
                self.write_line(f"sftbench: launcher ready in {self._launcher.start():.1f} s")
            self.write_line(f"sftbench: running {label} ({spec.key}) ...")
            result = self._launcher.run(spec, self.options.run)
            self.write_line(f"sftbench: {label}: {summary(result)}")
            self.results[spec] = result
            self._save(result)
        return self.results[spec]

    def _save(self, result: Result) -> None:
        if self.options.results_dir is not None:
            folder = self.options.results_dir / gpu_slug(str(result.machine.get("gpu")))
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{result.key}.json").write_text(result.to_json() + "\n", encoding="utf-8")

    def check(self, row: Row, benchmark) -> None:
        """The body of every benchmark test."""
        spec = self.spec_for(row)
        reason = self.skip_reason(spec)
        if reason:
            pytest.skip(reason)
        result = self.result_for(spec, row.node_id)
        self._feed_benchmark(benchmark, row, result)
        if result.outcome == "error":
            pytest.fail(f"{row.node_id} could not run: {result.message}", pytrace=False)
        if self.options.update_baselines:
            if result.outcome == "ok" and result.attention != spec.attention:
                pytest.fail(f"{row.node_id} ran {result.attention} (--sftbench-attn-fallback) for a row measured with "
                            f"{spec.attention}: its baseline is not rewritten with another kernel's numbers",
                            pytrace=False)
            path = self.store.path(self.gpu, result.key)
            if spec not in self._written:  # once per configuration, for all the rows that show it
                path = self.store.write(result, rows_of(row.spec) or [row], self._metadata())
                self._written.add(spec)
            self.reports.append(RowReport(row, result, None, f"baseline written: {path}"))
            return
        try:
            baseline = self.store.load(self.gpu, result.key)
        except BaselineError as error:
            pytest.fail(str(error), pytrace=False)
        tolerances = Tolerances(
            self.options.tolerances.time_pct if row.time_tolerance_pct is None else row.time_tolerance_pct,
            self.options.tolerances.memory_pct if row.memory_tolerance_pct is None else row.memory_tolerance_pct)
        comparison = compare(result, baseline, tolerances)
        self.reports.append(RowReport(row, result, comparison))
        message = comparison.explain(row.node_id)
        if comparison.verdict == "regression":
            pytest.fail(message, pytrace=False)
        if comparison.verdict in ("improvement", "not-comparable") and self.options.strict:
            pytest.fail(f"{message}\n  (--sftbench-strict: a stale or mismatched baseline fails)", pytrace=False)
        if comparison.verdict == "not-comparable":
            pytest.skip(message)

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

    def _metadata(self) -> dict:
        return {**environment.machine(), "versions": environment.package_versions(),
                "commit": environment.git_commit(self.options.baselines_dir.parent),
                "command": " ".join(sys.argv), "mode": "full" if self.options.run.full_epoch else "quick"}

    def summary_lines(self, skipped: int = 0) -> list[str]:
        """A line per row; regressions, improvements and mismatches also say what changed; then the counts."""
        lines = []
        for report in self.reports:
            verdict = report.note or report.comparison.verdict
            lines.append(f"{report.row.node_id}: {summary(report.result)} -> {verdict}")
            if report.comparison and report.comparison.verdict in ("regression", "improvement", "not-comparable"):
                lines += report.comparison.explain(report.row.node_id).splitlines()[1:]
        verdicts = [r.comparison.verdict if r.comparison else "baseline written" for r in self.reports]
        counts = {verdict: verdicts.count(verdict) for verdict in dict.fromkeys(verdicts)}
        lines.append(", ".join([f"{n} {verdict}" for verdict, n in counts.items()] + [f"{skipped} skipped"]))
        return lines


def cannot_run(spec: CaseSpec, attn_fallback: str | None) -> str | None:
    """Why this machine cannot run `spec` (one line naming what to install), or None."""
    if spec.device == "cuda" and environment.gpu_info()["gpu"] == "cpu":
        return "no CUDA GPU here: the seed's rows need one (the CPU smoke cases run without)"
    if spec.attention == "flash_attention_2" and not environment.flash_attn_installed() and attn_fallback is None:
        return f"{environment.FLASH_EXTRA}, or run with --sftbench-attn-fallback sdpa"
    if spec.quantization != "bf16":
        from sftbench import quantization

        try:
            quantization.require(spec.quantization)
        except quantization.MissingExtra as error:
            return str(error)
    return None


def _step() -> None:
    """The benchmark target: the work happened in the case's process; ReplayClock supplies its times."""


def summary(result: Result) -> str:
    if result.outcome != "ok":
        return f"{result.outcome.upper()} ({result.message.splitlines()[0][:160] if result.message else ''})"
    mem = result.memory
    reserved = f"{mem.max_reserved_mib:.0f} MiB reserved" if mem.max_reserved_mib is not None else \
        f"{mem.max_rss_mib:.0f} MiB host RSS"
    return (f"{result.minutes_per_1000_samples:.2f} min/1000 samples ({result.mode}), {result.tokens_per_s:.0f} tok/s, "
            f"{reserved}, {result.attention}, wall {result.overhead.get('wall_s', 0):.1f} s")
