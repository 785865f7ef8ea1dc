"""The run flow, without pytest: can a row run here, each configuration trained once, results stored,
and each row's outcome: its baseline written, or a verdict against it.

pytest (session.py), `python -m sftbench run` and the diagnostics are clients of this module: they turn
a RowOutcome into pass, fail or skip, or into an exit code; a run's record is sftbench.recorder's.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import sftbench
from sftbench import environment, faults
from sftbench.catalog import Row, rows_of
from sftbench.injection import Injection, injected
from sftbench.launcher import DEFAULT_TIMEOUT_S, Launcher, LauncherDidNotStart
from sftbench import render
from sftbench.render import describe
from sftbench.result import Metrics, Result, compute_capability
from sftbench.spec import CaseSpec, RunOptions
from sftbench.storage import locks
from sftbench.storage.baselines import BaselineError, BaselineStore
from sftbench.storage.files import NotWritten, not_writable
from sftbench.storage.results import ResultStore
from sftbench.verdicts import Tolerances, Verdict, compare, remeasured, wall_time_alone


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
    run_id: str | None = None  # what the workers of one pytest-xdist run share (its testrunuid)
    remeasure: bool = True  # a configuration whose wall time alone regressed runs again before its rows fail


class RunRefused(Exception):
    """The run cannot start training: a folder it needs is missing or not writable, another run holds it, or a
    self-test or fault knob is set wrong. One line that says what to do."""


def cannot_run(spec: CaseSpec, attn_fallback: str | None,
               fallback_option: str | None = environment.FALLBACK_OPTION) -> str | None:
    """Why this machine cannot run `spec` (one line naming what to install), or None (`fallback_option`:
    environment.attention_kernel)."""
    if spec.device == "cuda" and environment.gpu_info()["gpu"] == "cpu":
        return "no CUDA GPU here: GPU rows need one (the CPU smoke cases run without)"
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
    status: str  # the verdict's verdict, or "baseline written", "skipped", "error", "refused", "baseline error"
    message: str = ""
    result: Result | None = None
    verdict: Verdict | None = None
    baseline: Result | None = None  # what the result was compared with


class Runner:
    def __init__(self, config: RunConfig, log=print):
        self.config = config
        self.log = log
        self.baselines = BaselineStore(config.baselines_dir)
        self.results_store = None if config.results_dir is None else ResultStore(config.results_dir)
        self.results: dict[CaseSpec, Result] = {}
        self.outcomes: list[RowOutcome] = []  # of every row that trained, in the order checked
        self.baselines_written: list[Path] = []
        self.write_s: dict[str, float] = {}  # seconds writing each configuration's result file, by key
        self._launcher: Launcher | None = None
        self._ready: RunRefused | bool = False  # checked before the first case trains
        self._locks: list = []

    @property
    def started(self) -> bool:
        """Whether the run reached its first case (a pytest session of other tests never does)."""
        return self._ready is not False

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
        """Before the first case trains: the knobs, the folders this run reads and writes, and the right to write
        them (sftbench.storage.locks; the workers of one pytest-xdist run share it). RunRefused, from then on,
        where something is wrong."""
        if self._ready is False:
            self._ready = self._refusal() or True
        if isinstance(self._ready, RunRefused):
            raise self._ready

    def _refusal(self) -> RunRefused | None:
        config = self.config
        try:  # parsed here, before any case builds a model with them
            Injection.from_environ()
            faults.configured()
        except ValueError as error:
            return RunRefused(f"sftbench: {error}: nothing was trained")
        if not config.update_baselines and not config.baselines_dir.is_dir():
            return RunRefused(f"sftbench: no baselines folder {config.baselines_dir}: give the right "
                              "--sftbench-baselines (it is created only by --sftbench-update-baselines)")
        knobs = injected(os.environ) if config.update_baselines else []
        if knobs:
            return RunRefused(f"sftbench: --sftbench-update-baselines with the self-test knob(s) {', '.join(knobs)} "
                              "set: a baseline is never written from a run with injected work; nothing was trained")
        folders = [config.results_dir] if config.results_dir is not None else []
        if config.update_baselines:
            folders.append(self.baselines.folder(self.gpu))
        problems = [problem for folder in folders if (problem := not_writable(folder))]
        if problems:
            return RunRefused("sftbench: " + "; ".join(problems) + ": nothing was trained")
        held = [config.results_dir, config.baselines_dir if config.update_baselines else None]
        try:  # the baselines folder as a whole, not its GPU's: one lock per folder a run writes
            self._locks = self._hold([folder for folder in held if folder is not None])
        except locks.FolderBusy as error:
            return RunRefused(f"sftbench: {error}; nothing was trained")
        if config.worker is None and self.results_store is not None and (earlier := self.results_store.earlier()):
            self.log(f"sftbench: {config.results_dir} holds {len(earlier)} results of earlier runs; this run "
                     "replaces those of the configurations it trains")
        return None

    def _hold(self, folders: list[Path]) -> list:
        """The locks of the folders this run writes (shared by the workers of one pytest-xdist run), and a worker's
        GPU where it writes baselines."""
        held = []
        try:
            for folder in folders:
                held.append(locks.hold(folder, f"another sftbench run is writing {folder}: wait for it to finish, or "
                                               "give this run folders of its own (two runs would leave a mix of both)",
                                       self.config.run_id))
            if self.config.worker is not None and self.config.update_baselines and self.gpu != "cpu":
                held.append(locks.hold_worker_gpu(self.config.worker))
        except locks.FolderBusy:
            locks.release(held)
            raise
        return held

    def close(self) -> None:
        """At the end of the run: end any case still running, let go of the folders."""
        if self._launcher is not None:
            self._launcher.close()
        locks.release(self._locks)
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
            self.log(f"sftbench: {label}: {describe(Metrics.of(result))}")
            self.results[spec] = result
            if self.results_store is not None:
                started = time.perf_counter()
                try:
                    self.results_store.write(result)
                except NotWritten as error:
                    self.log(f"sftbench: {label}: {error}")
                self.write_s[result.key] = time.perf_counter() - started
        return self.results[spec]

    def check(self, row: Row) -> RowOutcome:
        """Train the row's configuration (once per run), then write its baseline or compare with it."""
        spec = self.spec_for(row)
        reason = self.skip_reason(spec)
        if reason:
            return RowOutcome(row, "skip", "skipped", reason)
        result = self.result_for(spec, row.node_id)
        if result.outcome == "error":
            outcome = RowOutcome(row, "fail", "error", f"{row.node_id} could not run: {result.message}", result)
        elif self.config.update_baselines:
            outcome = self._update(row, spec, result)
        else:
            outcome = self._compare(row, spec, result)
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
        if path not in self.baselines_written:  # once per configuration, for all the rows that show it
            try:
                path = self.baselines.write(result, rows_of(row.spec) or [row], self.metadata())
            except NotWritten as error:
                return RowOutcome(row, "fail", "refused", f"{row.node_id}: baseline not written: {error}", result)
            self.baselines_written.append(path)
        return RowOutcome(row, "pass", "baseline written", f"baseline written: {path}", result)

    def _compare(self, row: Row, spec: CaseSpec, result: Result) -> RowOutcome:
        try:
            baseline = self.baselines.load(self.gpu, result.key) or self.baselines.load_same_capability(
                self.gpu, result.key, compute_capability(result.machine))
        except BaselineError as error:
            return RowOutcome(row, "fail", "baseline error", str(error), result)
        run = self.config.tolerances
        tolerances = replace(
            run, gpu_time_pct=run.gpu_time_pct if row.gpu_time_tolerance_pct is None else row.gpu_time_tolerance_pct,
            time_pct=run.time_pct if row.time_tolerance_pct is None else row.time_tolerance_pct,
            memory_pct=run.memory_pct if row.memory_tolerance_pct is None else row.memory_tolerance_pct)
        verdict = compare(result, None if baseline is None else baseline.result, tolerances)
        first = next((o.row for o in self.outcomes if o.result is result), None)
        if first is None and self.config.remeasure and wall_time_alone(verdict):
            result, verdict = self._remeasure(row, spec, baseline.result, tolerances, verdict)
            if result.outcome == "error":  # compare() would call an error beside an error-free baseline a pass
                return RowOutcome(row, "fail", "error", f"{row.node_id} could not run again: {result.message}", result)
        if baseline is None and self.config.require_baseline:
            return RowOutcome(row, "fail", verdict.verdict, f"{row.node_id}: no baseline "
                              f"{self.baselines.path(self.gpu, result.key)} (--sftbench-require-baseline)",
                              result, verdict)
        message = render.message(verdict, row.node_id) if first is None else \
            f"{row.node_id}: {render.label(verdict)}, the verdict of its configuration, explained under {first.node_id}"
        action = "pass"
        if verdict.verdict == "regression":
            action = "fail"
        elif verdict.verdict in ("improvement", "not-comparable") and self.config.strict:
            action, message = "fail", f"{message}\n  (--sftbench-strict: a stale or mismatched baseline fails)"
        elif verdict.verdict == "not-comparable":
            action = "skip"
        return RowOutcome(row, action, verdict.verdict, message, result, verdict,
                          None if baseline is None else baseline.result)

    def _remeasure(self, row: Row, spec: CaseSpec, baseline: Result, tolerances: Tolerances,
                   first_verdict: Verdict) -> tuple[Result, Verdict]:
        """The configuration trained once more, in a fresh process, and judged again. On a host-bound step the host's
        passing state alone moved wall time by +58% between clean reruns (docs/measurements.md section 23), while a
        regression of the software stays in a second measurement: the second is the configuration's result and
        verdict, noting the first's change."""
        self.log(f"sftbench: {row.node_id}: wall time alone regressed; measuring it once more")
        del self.results[spec]
        result = self.result_for(spec, f"{row.node_id} (again)")
        return result, remeasured(first_verdict, compare(result, baseline, tolerances))

    def metadata(self) -> dict:
        """What a baseline and a run record keep of the run: machine, versions, commit, command, mode."""
        return {**environment.machine(), "versions": environment.package_versions(), "commit": commit(),
                "command": " ".join(sys.argv), "mode": self.config.run.mode}


def commit() -> str | None:
    """The commit of the code that ran: of the repository sftbench is imported from (SFTBENCH_COMMIT or the
    working directory's repository where it is installed from elsewhere, e.g. a copy without .git)."""
    return environment.git_commit(Path(sftbench.__file__).parent) or environment.git_commit(Path.cwd())
