"""The run flow, without pytest: can a row run here, each configuration trained once, results stored,
and each row's outcome: its baseline written, or a comparison with it.

pytest (session.py), `python -m sftbench run` and the diagnostics are clients of this module: they turn
a RowOutcome into pass, fail or skip, or into an exit code.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from sftbench import environment, update_guard
from sftbench.baselines import METRICS, BaselineError, BaselineStore, Comparison, Tolerances, compare
from sftbench.catalog import Row, rows_of
from sftbench.environment import gpu_slug
from sftbench.files import NotWritten, not_writable, write_atomically
from sftbench.history import RECORD_SCHEMA
from sftbench.injection import injected
from sftbench.launcher import DEFAULT_TIMEOUT_S, Launcher, LauncherDidNotStart
from sftbench.result import Result, describe
from sftbench.spec import CaseSpec, RunOptions


@dataclass(frozen=True)
class RunConfig:
    baselines_dir: Path
    results_dir: Path | None
    update_baselines: bool = False
    strict: bool = False
    require_baseline: bool = False  # a configuration without a baseline fails instead of passing as no-baseline
    run: RunOptions = RunOptions()
    tolerances: Tolerances = Tolerances()
    weights: tuple[tuple[str, str], ...] = ()  # (model_type, local checkpoint folder)
    timeout_s: float = DEFAULT_TIMEOUT_S
    shard: str | None = None  # --sftbench-shard I/N: the part of the selection this run covers
    worker: str | None = None  # the pytest-xdist worker id, where this run is one worker of several


class RunRefused(Exception):
    """The run cannot start training: a folder it needs is missing or not writable, or another update
    run holds the baselines. One line that says what to do."""


class ResultStore:
    """Results as JSON files, one naming scheme for every writer: <root>/<gpu-slug>/<key>.json, and
    <key>.2.json, <key>.3.json ... when the same store gets a configuration again (repeats, modes).
    Written atomically; NotWritten (sftbench.files) names where a result went when its folder failed."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._written: Counter[Path] = Counter()

    def write(self, result: Result) -> Path:
        folder = self.root / gpu_slug(str(result.machine.get("gpu")))  # made by write_atomically, or rescued
        first = folder / f"{result.key}.json"
        self._written[first] += 1
        count = self._written[first]
        path = first if count == 1 else folder / f"{result.key}.{count}.json"
        return write_atomically(path, result.to_json() + "\n")


def cannot_run(spec: CaseSpec, attn_fallback: str | None,
               fallback_option: str | None = environment.FALLBACK_OPTION) -> str | None:
    """Why this machine cannot run `spec` (one line naming what to install), or None (`fallback_option`:
    environment.attention_kernel)."""
    if spec.device == "cuda" and environment.gpu_info()["gpu"] == "cpu":
        return "no CUDA GPU here: the seed's rows need one (the CPU smoke cases run without)"
    try:
        environment.attention_kernel(spec.attention, attn_fallback, fallback_option)
    except environment.MissingFlashAttn as error:
        return str(error)
    if spec.quantization != "bf16":
        from sftbench import quantization

        try:
            quantization.require(spec.quantization)
        except quantization.MissingExtra as error:
            return str(error)
    return None


@dataclass
class RowOutcome:
    """What a row came to. `action` is what a client does with it: pass, fail or skip."""

    row: Row
    action: str  # "pass" | "fail" | "skip"
    verdict: str  # a Comparison's verdict, "baseline written", "skipped", "error" or "refused"
    message: str = ""
    result: Result | None = None
    comparison: Comparison | None = None
    baseline: Result | None = None  # what the result was compared with


# What a run record keeps of each result and baseline: the compared metrics, and what explains wall time.
RECORDED_METRICS = {**{name: read for name, (read, _) in METRICS.items()},
                    "gpu_busy_pct": lambda r: r.gpu_busy_pct, "wall_noise_pct": lambda r: r.wall_noise_pct,
                    "gpu_minutes_by_family": lambda r: r.gpu_minutes_by_family}


def metrics_of(result: Result) -> dict:
    return {"outcome": result.outcome, **{name: read(result) for name, read in RECORDED_METRICS.items()}}


class Runner:
    def __init__(self, config: RunConfig, log=print):
        self.config = config
        self.started = datetime.now(timezone.utc)
        self.log = log
        self.baselines = BaselineStore(config.baselines_dir)
        self.results_store = None if config.results_dir is None else ResultStore(config.results_dir)
        self.results: dict[CaseSpec, Result] = {}
        self.outcomes: list[RowOutcome] = []
        self._written: set[CaseSpec] = set()
        self._launcher: Launcher | None = None
        self._ready: RunRefused | bool = False  # checked before the first case trains
        self._locks: list = []
        self._merged: dict[str, list[dict]] = {"summary": [], "configurations": []}  # the other parts' (merge)
        self.lost_parts: list[str] = []  # parts that ended without sending theirs (a crashed pytest-xdist worker)

    @property
    def gpu(self) -> str:
        return str(environment.gpu_info()["gpu"])

    def spec_for(self, row: Row) -> CaseSpec:
        weights = dict(self.config.weights).get(row.spec.model_type)
        # Quantized rows keep their synthetic quantized weights (spec.py refuses a checkpoint for them).
        return row.spec.replace(weights_path=weights) if weights and row.spec.quantization == "bf16" else row.spec

    def skip_reason(self, spec: CaseSpec) -> str | None:
        return cannot_run(spec, self.config.run.attn_fallback)

    def prepare(self) -> None:
        """Before the first case trains: the folders this run reads and writes, and the right to write
        baselines (sftbench.update_guard). RunRefused, from then on, where something is wrong."""
        if self._ready is False:
            self._ready = self._refusal() or True
        if isinstance(self._ready, RunRefused):
            raise self._ready

    def _refusal(self) -> RunRefused | None:
        config = self.config
        if not config.update_baselines and not config.baselines_dir.is_dir():
            return RunRefused(f"sftbench: no baselines folder {config.baselines_dir}: give the right "
                              "--sftbench-baselines (it is created only by --sftbench-update-baselines)")
        knobs = injected(os.environ) if config.update_baselines else []
        if knobs:
            return RunRefused(f"sftbench: --sftbench-update-baselines with the self-test knob(s) {', '.join(knobs)} "
                              "set: a baseline is never written from a run with injected work; nothing was trained")
        folders = [config.results_dir] if config.results_dir is not None else []
        if config.update_baselines:
            folders.append(config.baselines_dir / gpu_slug(self.gpu))
        problems = [problem for folder in folders if (problem := not_writable(folder))]
        if problems:
            return RunRefused("sftbench: " + "; ".join(problems) + ": nothing was trained")
        if config.update_baselines:
            try:
                self._locks = update_guard.lock_update(config.baselines_dir / gpu_slug(self.gpu),
                                                       config.shard or "all", config.worker, self.gpu)
            except update_guard.UpdateRefused as error:
                return RunRefused(f"sftbench: {error}")
        return None

    def close(self) -> None:
        """At the end of the run: end any case still running, let go of the baselines."""
        if self._launcher is not None:
            self._launcher.close()
        update_guard.release(self._locks)
        self._locks = []

    def result_for(self, spec: CaseSpec, label: str) -> Result:
        """The configuration's result, trained on first use (a configuration in several tables runs once)."""
        if spec not in self.results:
            self.prepare()
            if self._launcher is None:
                self._launcher = Launcher(self.config.timeout_s, log=self.log)
                self.log("sftbench: starting the case launcher (imports torch and transformers once)")
                try:
                    self.log(f"sftbench: launcher ready in {self._launcher.start():.1f} s")
                except LauncherDidNotStart as error:  # each case then fails with this line
                    self.log(f"sftbench: {error}")
            self.log(f"sftbench: running {label} ({spec.key}) ...")
            result = self._launcher.run(spec, self.config.run)
            self.log(f"sftbench: {label}: {describe(result)}")
            self.results[spec] = result
            if self.results_store is not None:
                try:
                    self.results_store.write(result)
                except NotWritten as error:
                    self.log(f"sftbench: {label}: {error}")
        return self.results[spec]

    def check(self, row: Row) -> RowOutcome:
        """Train the row's configuration (once per run), then write its baseline or compare with it."""
        spec = self.spec_for(row)
        reason = self.skip_reason(spec)
        if reason:
            return RowOutcome(row, "skip", "skipped", reason)
        result = self.result_for(spec, row.node_id)
        if result.outcome == "error":
            return RowOutcome(row, "fail", "error", f"{row.node_id} could not run: {result.message}", result)
        outcome = self._update(row, spec, result) if self.config.update_baselines else self._compare(row, result)
        if outcome.verdict not in ("refused", "baseline error"):
            self.outcomes.append(outcome)
        return outcome

    def _update(self, row: Row, spec: CaseSpec, result: Result) -> RowOutcome:
        if result.outcome == "ok" and result.attention != spec.attention:
            return RowOutcome(row, "fail", "refused", (
                f"{row.node_id} ran {result.attention} (--sftbench-attn-fallback) for a row measured with "
                f"{spec.attention}: its baseline is not rewritten with another kernel's numbers"), result)
        knobs = injected(result.machine.get("settings", {}))
        if knobs:
            return RowOutcome(row, "fail", "refused", (
                f"{row.node_id} ran with the self-test knob(s) {', '.join(knobs)}: a baseline is never "
                "written from a run with injected work"), result)
        path = self.baselines.path(self.gpu, result.key)
        if spec not in self._written:  # once per configuration, for all the rows that show it
            try:
                path = self.baselines.write(result, rows_of(row.spec) or [row], self._metadata())
            except NotWritten as error:
                return RowOutcome(row, "fail", "refused", f"{row.node_id}: baseline not written: {error}", result)
            self._written.add(spec)
        return RowOutcome(row, "pass", "baseline written", f"baseline written: {path}", result)

    def _compare(self, row: Row, result: Result) -> RowOutcome:
        try:
            baseline = self.baselines.load(self.gpu, result.key)
        except BaselineError as error:
            return RowOutcome(row, "fail", "baseline error", str(error), result)
        run = self.config.tolerances
        tolerances = replace(
            run, gpu_time_pct=run.gpu_time_pct if row.gpu_time_tolerance_pct is None else row.gpu_time_tolerance_pct,
            time_pct=run.time_pct if row.time_tolerance_pct is None else row.time_tolerance_pct,
            memory_pct=run.memory_pct if row.memory_tolerance_pct is None else row.memory_tolerance_pct)
        comparison = compare(result, baseline, tolerances)
        if baseline is None and self.config.require_baseline:
            return RowOutcome(row, "fail", comparison.verdict, f"{row.node_id}: no baseline "
                              f"{self.baselines.path(self.gpu, result.key)} (--sftbench-require-baseline)",
                              result, comparison)
        first = next((o.row for o in self.outcomes if o.result is result), None)
        message = comparison.explain(row.node_id) if first is None else \
            f"{row.node_id}: {comparison.label}, the verdict of its configuration, explained under {first.node_id}"
        action = "pass"
        if comparison.verdict == "regression":
            action = "fail"
        elif comparison.verdict in ("improvement", "not-comparable") and self.config.strict:
            action, message = "fail", f"{message}\n  (--sftbench-strict: a stale or mismatched baseline fails)"
        elif comparison.verdict == "not-comparable":
            action = "skip"
        return RowOutcome(row, action, comparison.verdict, message, result, comparison,
                          None if baseline is None else baseline.result)

    def record(self) -> dict:
        """The run record: when, which commit, stack and GPU, and each configuration's verdict and metrics
        beside its baseline's; one JSON per run keeps the history (`python -m sftbench history`)."""
        return {"schema": RECORD_SCHEMA, "started": self.started.isoformat(timespec="seconds"),
                "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                **self._metadata(), "update_baselines": self.config.update_baselines,
                "configurations": self._record_configurations() + self._merged["configurations"],
                **({"lost_parts": self.lost_parts} if self.lost_parts else {})}

    def part(self) -> dict:
        """This run's configurations as plain JSON-able data, for a run that is one part of several (a
        pytest-xdist worker): their summary entries and run-record entries, for `merge` in the whole run."""
        return {"summary": self._summary_entries(), "configurations": self._record_configurations()}

    def merge(self, part: dict) -> None:
        """Add another part's configurations (its `part()`) to this run's summary and run record."""
        for name, entries in self._merged.items():
            entries += part[name]

    def lose(self, name: str) -> None:
        """A part that ended without its `part()`: the summary and the run record say what they lack."""
        self.lost_parts.append(name)

    def _record_configurations(self) -> list[dict]:
        configurations = []
        for outcomes in self._by_configuration():
            first = outcomes[0]
            configurations.append({
                "key": first.result.key, "rows": [o.row.node_id for o in outcomes], "verdict": first.verdict,
                "gpu_uuid": first.result.machine.get("gpu_uuid"),
                "label": first.comparison.label if first.comparison else first.verdict,
                "now": metrics_of(first.result), "baseline": metrics_of(first.baseline) if first.baseline else None,
                "explanation": first.comparison.explain(first.row.node_id).splitlines()[1:] if first.comparison else [],
                "wall_across_hosts": first.comparison is not None and first.comparison.wall_across_hosts,
            })
        return configurations

    def write_record(self) -> Path | None:
        """Write the run record to <results>/history/<started>-<commit>-<pid>.json (the process id keeps apart
        the records of runs started in the same second, as parallel parts of a run are); nothing without a
        results folder, or without outcomes and lost parts."""
        if self.results_store is None:
            return None
        record = self.record()
        if not record["configurations"] and not self.lost_parts:
            return None
        folder = self.config.results_dir / "history"
        path = folder / f"{self.started.strftime('%Y%m%dT%H%M%SZ')}-{record['commit'] or 'unknown'}-{os.getpid()}.json"
        try:
            return write_atomically(path, json.dumps(record, indent=1) + "\n")
        except NotWritten as error:
            self.log(f"sftbench: run record: {error}")
            return None

    def _by_configuration(self) -> list[list[RowOutcome]]:
        by_result: dict[int, list[RowOutcome]] = {}
        for outcome in self.outcomes:
            by_result.setdefault(id(outcome.result), []).append(outcome)
        return list(by_result.values())

    def _metadata(self) -> dict:
        return {**environment.machine(), "versions": environment.package_versions(),
                "commit": environment.git_commit(self.config.baselines_dir.parent),
                "command": " ".join(sys.argv), "mode": self.config.run.mode}

    def summary_entries(self) -> list[dict]:
        """Each configuration's verdict and summary lines, this run's and the merged parts'."""
        return self._summary_entries() + self._merged["summary"]

    def _summary_entries(self) -> list[dict]:
        entries = []
        for outcomes in self._by_configuration():
            first = outcomes[0]
            verdict = first.message if first.comparison is None else first.comparison.label
            lines = [f"{first.row.node_id}: {describe(first.result)} -> {verdict}"]
            if len(outcomes) > 1:
                lines.append("  the same configuration: " + ", ".join(o.row.node_id for o in outcomes[1:]))
            if first.verdict in ("regression", "improvement", "not-comparable"):
                lines += first.comparison.explain(first.row.node_id).splitlines()[1:]
            entries.append({"verdict": first.verdict, "lines": lines})
        return entries

    def summary_lines(self, skipped: int = 0) -> list[str]:
        """One verdict per configuration, naming every row it stands for; regressions, improvements and
        mismatches also say what changed; then the counts of configurations."""
        entries = self.summary_entries()
        lines = [line for entry in entries for line in entry["lines"]]
        verdicts = [entry["verdict"] for entry in entries]
        counts = {verdict: verdicts.count(verdict) for verdict in dict.fromkeys(verdicts)}
        lines.append(", ".join([f"{n} {verdict}" for verdict, n in counts.items()] + [f"{skipped} skipped"]))
        configurations = self._record_configurations() + self._merged["configurations"]
        if unjudged := sum(c["wall_across_hosts"] for c in configurations):
            lines.append(f"wall time not judged in {unjudged} of {len(entries)} configurations: their baselines ran "
                         "on another host or do not name theirs (GPU time and memory judged them; baselines "
                         "written on this host judge wall time too)")
        results = f"{self.config.results_dir}/" if self.config.results_dir is not None else "no results folder"
        lines += [f"{name} ended without its report (it crashed): the configurations it finished are missing from "
                  f"this summary and the run record; their results: {results}" for name in self.lost_parts]
        return lines
