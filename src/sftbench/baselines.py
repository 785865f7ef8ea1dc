"""Baselines: one JSON file per configuration under baselines/<gpu-slug>/, and the comparison with them.

A baseline is a Result measured on the GPU its folder names, plus the run's metadata. Comparing a new
Result with it judges each metric (lower is better for all):
- GPU-minutes per 1000 samples, from summed kernel time: the primary speed metric, tight tolerance;
- wall minutes per 1000 samples, only where both ran on the same host: worse only beyond a noise band (a
  floor, or the baseline's own measured spread if larger) and when the paired step samples differ
  significantly;
- memory: max reserved (the seed's metric, ms-swift's benchmark) and max allocated.
A regression says its kind: kernel (GPU time up), host-side (wall up, GPU time flat), both, or memory.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from sftbench import kernels
from sftbench.catalog import Row
from sftbench.environment import gpu_slug
from sftbench.files import write_atomically
from sftbench.result import Result

SCHEMA = 1
# GPU kernel time of a configuration repeats to 0.01-0.4% on one GPU, whatever the host is doing, and
# between H200s it moved up to 1.0% where the steps ran at the top clock...
DEFAULT_GPU_TIME_TOLERANCE_PCT = 2.0
# ...but where NVML reported the power cap holding the clock down (trackers.CLOCK_LIMITS; on the H200 the long
# steps of full 2048-8192, LoRA 4096-8192, batch 2-8), it is a property of the GPU: 1.1-1.8% apart between the
# two GPUs of one host, up to 3.2% between GPUs of different hosts, each GPU repeating itself to 0.4%. Such a
# comparison across two GPUs is judged at this tolerance; one on the same GPU (Result.machine["gpu_uuid"])
# keeps the tight one.
DEFAULT_LIMITED_GPU_TIME_TOLERANCE_PCT = 4.0
# Wall time of a host-bound step moves with the host: 5-8% between blocks of steps, and medians of
# 20-step blocks up to 17% apart on an idle H200 host. A wall-time change counts only beyond this floor
# (or the baseline's own measured spread, if larger) and only when the step samples differ significantly.
# Between hosts of one GPU model it moved up to 46%, beyond any band: it is compared only within a host.
DEFAULT_TIME_TOLERANCE_PCT = 20.0
DEFAULT_MEMORY_TOLERANCE_PCT = 2.0
# A kernel family (sftbench.kernels) is judged against the rest of its step: its GPU-minutes over the rest's.
# A whole GPU running faster or slower moves both alike; a change confined to the family moves the ratio by
# its full size, however small the family's share of the step. Between clean runs on H200s, every family that
# moved by 0.1% of the step or more moved against the rest by -0.4..+0.3% on one GPU (10 pairs) and by
# -2.0..+1.4% between two GPUs (13 pairs, a power-capped configuration among them); the families that moved
# beyond 2.5% moved by less than 0.06% of the step (docs/measurements.md section 11). So a family counts only
# where it also moved by FAMILY_MIN_STEP_PCT of the step: a family of a few microseconds jitters by several %.
DEFAULT_FAMILY_TOLERANCE_PCT = 2.5
FAMILY_MIN_STEP_PCT = 0.1
SIGNIFICANCE = 0.01  # two-sided p-value below which step samples differ
MIN_PAIRED_STEPS = 8  # fewer timed steps cannot reach SIGNIFICANCE: wall time is then judged by its band alone
# metric name -> (how to read it from a Result, its kind: which tolerance applies)
METRICS = {
    "gpu_minutes_per_1000_samples": (lambda r: r.gpu_minutes_per_1000_samples, "gpu"),
    "minutes_per_1000_samples": (lambda r: r.minutes_per_1000_samples, "wall"),
    "max_reserved_mib": (lambda r: r.memory.max_reserved_mib, "memory"),
    "max_allocated_mib": (lambda r: r.memory.max_allocated_mib, "memory"),
}


class BaselineError(Exception):
    """A baseline file that cannot be used: corrupt, of another schema, or of another GPU."""


@dataclass
class Baseline:
    result: Result
    rows: list[str]  # node ids of the seed rows this configuration stands for
    tables: list[str]
    metadata: dict
    path: Path

    def to_json(self) -> str:
        return json.dumps({"schema": SCHEMA, "key": self.result.key, "rows": self.rows, "tables": self.tables,
                           "metadata": self.metadata, "result": self.result.to_dict()}, indent=1, sort_keys=True)


class BaselineStore:
    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, gpu: str, key: str) -> Path:
        return self.root / gpu_slug(gpu) / f"{key}.json"

    def load(self, gpu: str, key: str) -> Baseline | None:
        path = self.path(gpu, key)
        return self.read(path) if path.exists() else None

    def read(self, path: Path) -> Baseline:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError("a JSON object was expected")
            if data.get("schema") != SCHEMA:
                raise BaselineError(f"schema {data.get('schema')!r}, this sftbench reads schema {SCHEMA}")
            key, result = data["key"], Result.from_dict(data["result"])
            baseline = Baseline(result, data["rows"], data["tables"], data["metadata"], path)
        except BaselineError as error:
            raise BaselineError(f"baseline {path}: {error}") from None
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise BaselineError(f"baseline {path} is corrupt ({type(error).__name__}: {error}); "
                                "restore it from git or rewrite it with --sftbench-update-baselines") from None
        measured_on = gpu_slug(str(result.machine.get("gpu")))
        if measured_on != path.parent.name or key != path.stem:
            raise BaselineError(f"baseline {path} was measured on {result.machine.get('gpu')!r} for {key!r} "
                                f"but is stored as {path.parent.name}/{path.stem}: a baseline counts only for "
                                "the GPU model and configuration it was measured on")
        problems = unusable_metrics(result)
        if problems:
            raise BaselineError(f"baseline {path} is unusable: {'; '.join(problems)}; rewrite it with "
                                "--sftbench-update-baselines")
        return baseline

    def scan(self) -> tuple[list[Baseline], list[BaselineError]]:
        """(the usable baselines, an error naming each unusable file): one bad file hides no good one."""
        baselines, errors = [], []
        for path in sorted(self.root.glob("*/*.json")):
            try:
                baselines.append(self.read(path))
            except BaselineError as error:
                errors.append(error)
        return baselines, errors

    def write(self, result: Result, rows: list[Row], metadata: dict) -> Path:
        """Write atomically: a crash mid-write leaves the previous baseline intact (NotWritten: sftbench.files)."""
        gpu = str(result.machine.get("gpu"))
        path = self.path(gpu, result.key)
        baseline = Baseline(result, [r.node_id for r in rows], sorted({r.table for r in rows}),
                            {**metadata, "written": datetime.now(timezone.utc).isoformat(timespec="seconds")}, path)
        return write_atomically(path, baseline.to_json() + "\n")


def unusable_metrics(result: Result) -> list[str]:
    """What makes an `ok` baseline's metrics unusable: nothing may pass against nothing.

    Required: minutes per 1000 samples, and on a GPU max reserved and max allocated memory, each a finite
    number > 0. Optional (None in baselines written before sftbench measured them): GPU-minutes, the
    kernel step times and SM clocks (> 0), the wall-time noise band and the clock-limit step counts (>= 0),
    each finite where present; the host (machine["host"]), where present, a list of names."""
    if result.outcome != "ok":
        return []
    on_gpu = gpu_slug(str(result.machine.get("gpu"))) != "cpu"
    checks = [("minutes_per_1000_samples", result.minutes_per_1000_samples, True, 0.0)]
    checks += [(name, getattr(result.memory, name), on_gpu, 0.0) for name in ("max_reserved_mib", "max_allocated_mib")]
    checks += [("gpu_minutes_per_1000_samples", result.gpu_minutes_per_1000_samples, False, 0.0),
               ("wall_noise_pct", result.wall_noise_pct, False, None)]
    checks += [(f"kernel_step_s[{i}]", value, True, 0.0) for i, value in enumerate(result.kernel_step_s or [])]
    checks += [(f"kernel_step_sm_mhz[{i}]", value, False, 0.0)
               for i, value in enumerate(result.kernel_step_sm_mhz or [])]
    limits = result.kernel_clock_limits
    problems = [] if limits is None or isinstance(limits, dict) else [f"kernel_clock_limits is {limits!r}, not a mapping"]
    host = result.machine.get("host")
    if host is not None and not (isinstance(host, list) and all(isinstance(name, str) for name in host)):
        problems.append(f"machine.host is {host!r}, not a list of names")  # a string would match by its letters
    checks += [(f"kernel_clock_limits[{name!r}]", value, True, None)
               for name, value in (limits.items() if isinstance(limits, dict) else [])]
    problems += _kernel_table_problems(result)
    checks += [(f"kernel_step_weights[{i}]", value, True, None) for i, value in enumerate(result.kernel_step_weights)]
    for name, value, required, above in checks:
        if value is None:
            if required:
                problems.append(f"{name} is missing")
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"{name} is {value!r}, not a number")
        elif not math.isfinite(value) or (value <= above if above is not None else value < 0):
            problems.append(f"{name} is {value!r}, not a finite number {'> 0' if above is not None else '>= 0'}")
    return problems


def _at(values: list, index: int):
    """values[index], None where the list is shorter (a result from before the values were recorded)."""
    return values[index] if index < len(values) else None


def _kernel_table_problems(result: Result) -> list[str]:
    """What makes a result's kernel names and per-step kernel tables unusable for family verdicts: a name that is
    not a string, an entry that is not [index of a name, count >= 0, nanoseconds >= 0], or a table or weight per
    traced step that is missing (results without kernel names have neither)."""
    names, steps = result.kernel_names, result.kernel_step_kernels
    if not names and not steps:
        return []
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        return ["kernel_names is not a list of names"]
    traced = len(result.kernel_step_tokens)
    if len(steps) != traced or len(result.kernel_step_weights) != traced:
        return [f"{traced} traced steps but {len(steps)} kernel tables and {len(result.kernel_step_weights)} weights"]
    for i, step in enumerate(steps):
        for entry in step:
            if not (isinstance(entry, list) and len(entry) == 3 and all(type(v) is int for v in entry)
                    and 0 <= entry[0] < len(names) and entry[1] >= 0 and entry[2] >= 0):
                return [f"kernel_step_kernels[{i}] has {entry!r}, not [name index, count, nanoseconds]"]
    return []


@dataclass(frozen=True)
class Tolerances:
    gpu_time_pct: float = DEFAULT_GPU_TIME_TOLERANCE_PCT  # GPU-minutes per 1000 samples
    time_pct: float = DEFAULT_TIME_TOLERANCE_PCT  # wall minutes: the least noise band
    memory_pct: float = DEFAULT_MEMORY_TOLERANCE_PCT
    limited_gpu_time_pct: float = DEFAULT_LIMITED_GPU_TIME_TOLERANCE_PCT  # clock held down, another GPU
    family_pct: float = DEFAULT_FAMILY_TOLERANCE_PCT  # a kernel family against the rest of the step

    def of(self, kind: str) -> float:
        return {"gpu": self.gpu_time_pct, "wall": self.time_pct, "memory": self.memory_pct}[kind]


@dataclass
class MetricChange:
    metric: str
    baseline: float
    now: float
    tolerance_pct: float  # for wall time: the noise band
    kind: str = "memory"  # gpu | wall | memory
    p_value: float | None = None  # wall time: do the step samples differ? None where too few to tell

    @property
    def delta_pct(self) -> float:
        return (self.now - self.baseline) / self.baseline * 100 if self.baseline else 0.0

    @property
    def verdict(self) -> str:
        beyond = abs(self.delta_pct) > self.tolerance_pct
        if not beyond or (self.p_value is not None and self.p_value >= SIGNIFICANCE):
            return "same"
        return "worse" if self.delta_pct > 0 else "better"

    def describe(self) -> str:
        if self.kind != "wall":
            limit = f"tolerance {self.tolerance_pct:g}%"
        else:
            limit = f"noise band {self.tolerance_pct:.3g}%" + (
                "" if self.p_value is None else f", step samples p={self.p_value:.2g}")
        return f"{self.metric}: {self.baseline:.6g} -> {self.now:.6g} ({self.delta_pct:+.1f}%, {limit})"


@dataclass
class FamilyChange:
    """A kernel family's projected epoch seconds in the baseline and now, beside the whole step's, and the
    kernels of the family whose time moved most, appeared or vanished (epoch seconds by short name)."""

    family: str
    baseline: float
    now: float
    baseline_step: float
    now_step: float
    tolerance_pct: float
    kernels: tuple[dict[str, float], dict[str, float]]  # the family's kernels' epoch seconds: (baseline, now)
    micro_steps: float  # the epoch's micro-steps, to show kernels in ms per micro-step

    @property
    def delta_pct(self) -> float:
        return 100 * (self.now / self.baseline - 1) if self.baseline else math.inf

    @property
    def step_pct(self) -> float:
        """The family's change in % of the baseline's step."""
        return 100 * (self.now - self.baseline) / self.baseline_step

    @property
    def against_rest_pct(self) -> float:
        """The change of the family's seconds over the rest of the step's: what is judged."""
        before = self.baseline / (self.baseline_step - self.baseline)
        now = self.now / (self.now_step - self.now)
        return 100 * (now / before - 1) if before else math.inf

    @property
    def excess_step_pct(self) -> float:
        """What the family moved beyond the rest of the step's pace, in % of the step now."""
        pace = (self.now_step - self.now) / (self.baseline_step - self.baseline)
        return 100 * (self.now - self.baseline * pace) / self.now_step

    @property
    def verdict(self) -> str:
        if self.against_rest_pct > self.tolerance_pct and self.excess_step_pct > FAMILY_MIN_STEP_PCT:
            return "worse"
        if self.against_rest_pct < -self.tolerance_pct and self.excess_step_pct < -FAMILY_MIN_STEP_PCT:
            return "better"
        return "same"

    def describe(self) -> str:
        before, now = (_by_label(seconds) for seconds in self.kernels)
        ms = 1000 / self.micro_steps
        moved = sorted((name for name in before.keys() & now.keys()),
                       key=lambda name: -abs(now[name] - before[name]))[:3]
        parts = [f"{name} {before[name] * ms:.3g} -> {now[name] * ms:.3g} ms/step" for name in moved
                 if abs(now[name] - before[name]) >= 0.01 * before[name]]
        parts += [f"new {name} {now[name] * ms:.3g} ms/step" for name in sorted(now.keys() - before.keys())]
        parts += [f"gone {name} ({before[name] * ms:.3g} ms/step)" for name in sorted(before.keys() - now.keys())]
        text = (f"{self.family} {self.delta_pct:+.1f}% ({self.step_pct:+.1f}% of the step; "
                f"{self.against_rest_pct:+.1f}% against the rest of the step, tolerance {self.tolerance_pct:g}%)")
        return text + (": " + "; ".join(parts) if parts else "")


def kernel_label(name: str) -> str:
    """A kernel's name in a message: without its template arguments and namespaces (flash-attn 2.6 and 2.8 name
    the same kernels with and without `flash::`)."""
    return name.split("<", 1)[0].rsplit("::", 1)[-1]


def _by_label(seconds: dict[str, float]) -> dict[str, float]:
    """Kernels' seconds summed by kernel_label."""
    labelled: dict[str, float] = {}
    for name, value in seconds.items():
        labelled[kernel_label(name)] = labelled.get(kernel_label(name), 0.0) + value
    return labelled


@dataclass
class Comparison:
    """regression | improvement | pass | no-baseline | not-comparable, with what led to it."""

    verdict: str
    changes: list[MetricChange] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    version_changes: dict[str, tuple] = field(default_factory=dict)
    setting_changes: dict[str, tuple] = field(default_factory=dict)  # driver, CUDA, environment variables
    wall_across_hosts: bool = False  # both measured wall time, not on one known host: it was not judged
    families: list[FamilyChange] = field(default_factory=list)  # every kernel family of both runs

    @property
    def label(self) -> str:
        """The verdict, and for a regression which kind: kernel (GPU time up), host-side (wall time up with
        GPU time flat), both, wall time where no GPU time tells them apart, memory."""
        if self.verdict != "regression" or not self.changes:
            return self.verdict
        worse = {c.kind for c in self.changes if c.verdict == "worse"}
        has_gpu = any(c.kind == "gpu" for c in self.changes)
        families = [f.family for f in self.families if f.verdict == "worse"]
        kinds = []
        if "gpu" in worse or families:
            kinds.append("kernel and host-side" if "wall" in worse else "kernel")
        elif "wall" in worse:
            kinds.append("host-side" if has_gpu else "wall-time")
        if "memory" in worse:
            kinds.append("memory")
        text = ", ".join(f"{kind} regression" for kind in kinds)
        return text.replace("kernel", f"kernel ({', '.join(families)})", 1) if families else text

    def explain(self, case: str) -> str:
        lines = [f"{case}: {self.label}"]
        lines += [f"  {reason}" for reason in self.reasons]
        lines += [f"  {c.describe()}" for c in self.changes if c.verdict != "same"]
        # A family that grew makes the others shrink against the rest of the step: name only the grown ones then.
        shown = [f for f in self.families if f.verdict == "worse"] or [f for f in self.families if f.verdict != "same"]
        lines += [f"  {f.describe()}" for f in shown]
        if self.version_changes:
            lines.append("  versions that differ from the baseline's: " + ", ".join(
                f"{name} {old} -> {new}" for name, (old, new) in sorted(self.version_changes.items())))
        if self.setting_changes:
            lines.append("  settings that differ from the baseline's: " + ", ".join(
                f"{name} {old} -> {new}" for name, (old, new) in sorted(self.setting_changes.items())))
        return "\n".join(lines)


def compare(result: Result, baseline: Baseline | None, tolerances: Tolerances) -> Comparison:
    if baseline is None:
        return Comparison("no-baseline", reasons=[f"no baseline for {result.machine.get('gpu')}"])
    old = baseline.result
    differ = {"version_changes": _version_changes(old, result), "setting_changes": _setting_changes(old, result)}
    # Outcomes first: an OOM while building the model leaves no kernel or backend to compare.
    if (old.outcome, result.outcome) == ("ok", "oom"):
        return Comparison("regression", reasons=[f"fitted in the baseline, now OOMs: {result.message}"], **differ)
    if (old.outcome, result.outcome) == ("oom", "ok"):
        return Comparison("improvement", reasons=["OOMed in the baseline, now fits"], **differ)
    if old.outcome != "ok" or result.outcome != "ok":
        return Comparison("pass", reasons=[f"outcome {result.outcome} as in the baseline"], **differ)
    setup = (old.attention, _without_versions(old.quantization_backend), old.mode)
    if (result.attention, _without_versions(result.quantization_backend), result.mode) != setup:
        return Comparison("not-comparable", reasons=[
            f"baseline ran attention={old.attention}, backend={old.quantization_backend}, mode={old.mode}; this run "
            f"attention={result.attention}, backend={result.quantization_backend}, mode={result.mode}"], **differ)
    changes = []
    limited = (bool(old.kernel_clock_limits) or bool(result.kernel_clock_limits)) and not _same_gpu(old, result)
    same_host = _same_host(old, result)
    for name, (read, kind) in METRICS.items():
        if read(old) is None or read(result) is None or (kind == "wall" and not same_host):
            continue
        change = MetricChange(name, read(old), read(result), tolerances.of(kind), kind)
        if kind == "gpu" and limited:
            change.tolerance_pct = max(change.tolerance_pct, tolerances.limited_gpu_time_pct)
        if kind == "wall":
            change.tolerance_pct = max(change.tolerance_pct, old.wall_noise_pct or 0.0)
            change.p_value = step_samples_p_value(old, result)
        changes.append(change)
    families, family_reasons = compare_families(old, result, tolerances.family_pct)
    verdicts = {c.verdict for c in changes} | {f.verdict for f in families}
    verdict = "regression" if "worse" in verdicts else "improvement" if "better" in verdicts else "pass"
    wall_unjudged = _wall_not_judged(old, result, same_host)
    reasons = _missing_gpu_time(old, result, same_host) + wall_unjudged + _clock_change(old, result)
    if limited and any(c.kind == "gpu" for c in changes):
        reasons.append(_clock_limits(old, result))
    reasons += family_reasons + host_work_changes(old, result)
    return Comparison(verdict, changes, reasons=reasons, wall_across_hosts=bool(wall_unjudged), families=families,
                      **differ)


def compare_families(old: Result, new: Result, tolerance_pct: float) -> tuple[list[FamilyChange], list[str]]:
    """Each kernel family of either run against the baseline's, both classified by the current rules
    (kernel_families.toml), and why families were not judged where they were not."""
    before, now = kernels.epoch_families(old), kernels.epoch_families(new)
    if now is None:
        return [], []
    if before is None:
        return [], [("the baseline has no kernel families (written before sftbench recorded them): GPU time is "
                     "judged on the step total")]
    old_step, new_step = sum(before.values()), sum(now.values())
    return [FamilyChange(family, before.get(family, 0.0), now.get(family, 0.0), old_step, new_step, tolerance_pct,
                         (kernels.epoch_kernels(old, family), kernels.epoch_kernels(new, family)),
                         kernels.micro_steps(new))
            for family in kernels.families() if family in before or family in now], []


def host_work_changes(old: Result, new: Result) -> list[str]:
    """The torch operators and CUDA API calls whose counts per micro-step changed, in the longest micro-step both
    traced: exact counts, shown as host-side evidence beside the verdict, never a verdict of their own."""
    common = set(old.kernel_step_tokens) & set(new.kernel_step_tokens) - {0}
    if not common or not old.kernel_step_operators or not new.kernel_step_operators:
        return []
    tokens = max(common)
    lines = []
    for what, field_name in (("torch operators", "kernel_step_operators"), ("CUDA API calls", "kernel_step_api_calls")):
        before, now = (_at(getattr(r, field_name), r.kernel_step_tokens.index(tokens)) for r in (old, new))
        if before is None or now is None:
            continue
        delta = {name: now.get(name, 0) - before.get(name, 0) for name in before.keys() | now.keys()}
        moved = sorted((name for name, d in delta.items() if d), key=lambda name: (-abs(delta[name]), name))
        if moved:
            shown = ", ".join(f"{delta[name]:+d} {name}" for name in moved[:8])
            lines.append(f"{what} per micro-step ({tokens} tokens): {shown}"
                         + (f" and {len(moved) - 8} more" if len(moved) > 8 else ""))
    return lines


def step_samples_p_value(old: Result, new: Result) -> float | None:
    """Two-sided p-value that the timed steps of the two runs differ in speed: the Wilcoxon signed-rank test
    on the log-ratios of paired steps where both timed the same batches (the quick mode does), else the
    Mann-Whitney U test on seconds per token. None where either run timed fewer than MIN_PAIRED_STEPS."""
    if min(len(old.step_durations_s), len(new.step_durations_s)) < MIN_PAIRED_STEPS:
        return None
    from scipy import stats

    if old.step_tokens == new.step_tokens:
        ratios = np.log(new.step_durations_s) - np.log(old.step_durations_s)
        return 1.0 if not ratios.any() else float(stats.wilcoxon(ratios).pvalue)
    per_token = [np.divide(r.step_durations_s, np.maximum(r.step_tokens, 1)) for r in (old, new)]
    return float(stats.mannwhitneyu(*per_token).pvalue)


def _missing_gpu_time(old: Result, new: Result, same_host: bool) -> list[str]:
    """Why GPU time was not compared, where one side has it and the other does not."""
    speed = "speed is judged on wall time alone" if same_host else "speed is not judged"
    if old.gpu_minutes_per_1000_samples is None and new.gpu_minutes_per_1000_samples is not None:
        return [f"the baseline has no GPU kernel time (it predates that metric): {speed}"]
    if new.gpu_minutes_per_1000_samples is None and old.gpu_minutes_per_1000_samples is not None:
        return [f"this run has no GPU kernel time ({new.kernel_clock}): {speed}"]
    return []


def _same_host(old: Result, new: Result) -> bool:
    return bool(set(old.machine.get("host") or ()) & set(new.machine.get("host") or ()))


def _wall_not_judged(old: Result, new: Result, same_host: bool) -> list[str]:
    """Why wall time was not compared: the runs' hosts differ, or the baseline's is not recorded."""
    if same_host or old.minutes_per_1000_samples is None or new.minutes_per_1000_samples is None:
        return []
    where = "its host is not recorded" if not old.machine.get("host") else "it ran on another host"
    return [(f"wall time is not judged: {where}, and between hosts of one GPU model it moves by up to 46% "
             "(a host-bound step runs as fast as the host's CPUs let it)")]


def _clock_change(old: Result, new: Result) -> list[str]:
    """The GPU's SM clock in the traced steps (median of their means), where both runs recorded it and it moved
    by 1% or more."""
    before, now = (np.median(clocks) if (clocks := [c for c in r.kernel_step_sm_mhz if c]) else None
                   for r in (old, new))
    if before is None or now is None or abs(now - before) < 0.01 * before:
        return []
    return [(f"GPU SM clock in the traced steps: {before:.0f} -> {now:.0f} MHz "
             f"({100 * (now / before - 1):+.1f}%, median of the steps' means)")]


def _same_gpu(old: Result, new: Result) -> bool:
    return old.machine.get("gpu_uuid") is not None and old.machine.get("gpu_uuid") == new.machine.get("gpu_uuid")


def _clock_limits(old: Result, new: Result) -> str:
    """Why GPU time is judged at the wider tolerance: what held the clock down, in how many traced steps."""
    def seen(r: Result) -> str:
        if r.kernel_clock_limits is None:
            return "not recorded"
        steps = len(r.kernel_step_tokens)
        return ", ".join(f"{name} in {n} of {steps} steps" for name, n in r.kernel_clock_limits.items()) or "none"
    gpus = "the baseline's GPU is not recorded" if old.machine.get("gpu_uuid") is None else "on another GPU"
    return (f"the GPU held its clock down in the traced steps (this run: {seen(new)}; the baseline: {seen(old)}), "
            f"{gpus}: such kernel time differs between GPUs of one model, so GPU time is judged at the "
            "clock-limited tolerance")


def _version_changes(old: Result, new: Result) -> dict[str, tuple]:
    return {name: (old.versions.get(name), version) for name, version in new.versions.items()
            if old.versions.get(name) != version and name != "sftbench"}


def _setting_changes(old: Result, new: Result) -> dict[str, tuple]:
    """Driver, CUDA and the environment variables of environment.SETTINGS that differ; a baseline written
    before sftbench recorded the variables says nothing about them."""
    changes = {name: (old.machine.get(name), new.machine.get(name)) for name in ("driver", "cuda")
               if old.machine.get(name) != new.machine.get(name)}
    if "settings" in old.machine:
        before, now = old.machine["settings"], new.machine.get("settings", {})
        changes.update({name: (before.get(name, "unset"), now.get(name, "unset"))
                        for name in set(before) | set(now) if before.get(name) != now.get(name)})
    return changes


def _without_versions(backend: str | None) -> str | None:
    """'bitsandbytes 0.50.2 / Linear4bit nf4' -> 'bitsandbytes / Linear4bit nf4': an upgrade is compared, not excluded."""
    return None if backend is None else re.sub(r" \d+(\.\w+)+", "", backend)


def listing(baselines: list[Baseline]) -> list[dict]:
    """One entry per seed row that has a baseline, for scripts (`python -m sftbench baselines --json`)."""
    entries = []
    for baseline in baselines:
        r = baseline.result
        for node_id in baseline.rows:
            test, _, case_id = node_id.partition("[")
            entries.append({
                "case_id": case_id.rstrip("]"), "test": test, "tables": baseline.tables, "key": r.key,
                "gpu": r.machine.get("gpu"), "outcome": r.outcome, "mode": r.mode,
                "max_reserved_mib": r.memory.max_reserved_mib, "max_allocated_mib": r.memory.max_allocated_mib,
                "nvml_peak_mib": r.memory.nvml_peak_mib, "minutes_per_1000_samples": r.minutes_per_1000_samples,
                "gpu_minutes_per_1000_samples": r.gpu_minutes_per_1000_samples, "gpu_busy_pct": r.gpu_busy_pct,
                "gpu_minutes_by_family": r.gpu_minutes_by_family, "largest_family": largest_family(r),
                "host": r.machine.get("host"), "gpu_uuid": r.machine.get("gpu_uuid"),
                "tokens_per_s": r.tokens_per_s, "attention": r.attention, "quantization": r.case["quantization"],
                "quantization_backend": r.quantization_backend, "trainable_params": r.trainable_params,
                "versions": r.versions, "written": baseline.metadata.get("written"),
                "commit": baseline.metadata.get("commit"),
            })
    return entries


def largest_family(result: Result) -> dict | None:
    """The kernel family with the most GPU time and its share of the step (today's rules, as verdicts and the
    report classify), where the result has kernel names."""
    families = kernels.epoch_families(result)
    if not families or not sum(families.values()):
        return None
    name = max(families, key=families.get)
    return {"family": name, "share_pct": 100 * families[name] / sum(families.values())}
