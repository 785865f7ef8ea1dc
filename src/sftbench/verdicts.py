"""Verdicts: a result judged against its baseline, as data.

`compare` returns a Verdict: regression, improvement, pass, no-baseline or not-comparable; for a regression its
kinds (kernel, host-side, wall-time, memory, OOM); a finding for each metric and each kernel family (before,
after, change, the threshold it was judged against and what that threshold rests on); notes on what was not
judged and why; the host's work that changed (operator and CUDA-call counts, exact, never a verdict of their
own); and the versions and settings that differ. sftbench.render is the only code that turns one into text.
Every metric is lower-is-better:

- GPU-minutes per 1000 samples, from summed kernel time: the primary speed metric, a tight tolerance;
- each kernel family against the GPU's pace in the other families, at a threshold of the family's own
  measured noise (below);
- wall minutes per 1000 samples, only where both ran on the same host: worse only beyond a noise band (a
  floor, or the baseline's own measured spread if larger, up to MAX_WALL_NOISE_PCT) and when the paired step
  samples differ significantly; a regression of wall time alone fails a row only where a second measurement
  shows it too (sftbench.runner measures it again);
- memory: max reserved (the seed's metric, ms-swift's benchmark) and max allocated.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from statistics import median

from sftbench import kernels
from sftbench.result import SLACK, Result, compute_capability, minutes_per_1000_samples

# GPU kernel time of a configuration repeats to 0.01-0.4% on one GPU, whatever the host is doing, and
# between H200s it moved up to 1.0% where the steps ran at the top clock...
DEFAULT_GPU_TIME_TOLERANCE_PCT = 2.0
# ...but where NVML reported the power cap holding the clock down (trackers.CLOCK_LIMITS; on the H200 the long
# steps of full 2048-8192, LoRA 4096-8192, batch 2-8), it is a property of the GPU: 1.1-1.8% apart between the
# two GPUs of one host, up to 3.2% between GPUs of different hosts, each GPU repeating itself to 0.4%. Such a
# comparison across two GPUs is judged at this tolerance; one on the same GPU (Result.machine["gpu_uuid"])
# keeps the tight one.
DEFAULT_LIMITED_GPU_TIME_TOLERANCE_PCT = 4.0
# Wall time of a host-bound step moves with the host, and a whole run moves with the host's state while it ran:
# between runs minutes apart on one host, nothing changed, a configuration's wall minutes moved by -33% to +35%
# on H200 hosts and, in 165 comparisons on H100 hosts, by -24.3% to +58.1% (sd 10.5%; rows whose GPU was busy 85%
# of the wall time or more within -4.3% to +10.4%), while each run's own steps agreed to a few % and its GPU time to
# 0.4% (docs/measurements.md sections 7, 11-13, 21-24). A wall-time change counts only beyond this band, above all
# those moves but one (or beyond the baseline's own measured spread, if larger), and only when the step samples
# differ significantly; the one beyond it (+58.1%, the host's own pace +66.9%) is why a regression of wall time
# alone is measured once more before it fails (sftbench.runner). Between hosts of one GPU model it moved up to 46%:
# it is compared only within a host.
DEFAULT_TIME_TOLERANCE_PCT = 50.0
# A baseline whose own steps spread this much (a host drifting up to 66% within minutes did) would pass a 2x
# slow-down and never show an improvement: its wall time is too noisy to judge.
MAX_WALL_NOISE_PCT = 50.0
DEFAULT_MEMORY_TOLERANCE_PCT = 2.0
# Against a baseline of another GPU model of the same compute capability, max reserved is judged only where both
# runs reserved at most this share of the smaller card: the 8 qwen-7b-chat configurations measured on an H100 (80
# GB) and on an H200 (141 GB) reserved the same to the MiB up to 75022 MiB, 92.0% of the H100 (docs/measurements.md
# section 13); nearer its capacity an allocator keeps less cached.
RESERVED_COMPARABLE_PCT = 92.0
# A kernel family is judged against the GPU's pace in the other families: its change over the median change of
# the families that hold FAMILY_SHARE_PCT of the step or more. A whole GPU running faster or slower moves them
# all alike, and a change in one family (a slower attention, a faster GEMM) leaves the median where it was.
# Between clean reruns on one H100 every family moved by -0.97..+0.65%, on one H200 by -0.4..+0.3%; between two
# H200s by -2.0..+1.4% (docs/measurements.md sections 11-12). So a family fails beyond these thresholds, or
# beyond FAMILY_NOISE_Z times the error of its time from its measured repeat spread (kernels.family_noise_pct),
# whichever is larger. The epoch's family time averages the traced steps, so for a family of FAMILY_SHARE_PCT of
# the step or more that error is the epoch's (kernels.epoch_error_factor): in 304 such families of five clean
# reruns on H100s every change stayed within 0.66 of the threshold, and attention:3 was flagged in 33 of 33
# comparisons, where one step's spread as the error missed 2 (section 21). A smaller family (embedding, the
# loss: a few microseconds) moved between hosts by up to 25%, beyond its epoch's error: its error stays one
# step's spread, so a family whose time jitters by several % never fails a row by jitter.
DEFAULT_FAMILY_TOLERANCE_PCT = 2.0  # against a baseline of the same GPU
DEFAULT_OTHER_GPU_FAMILY_TOLERANCE_PCT = 3.0  # against a baseline of another GPU of the same model
FAMILY_NOISE_Z = 4.0
FAMILY_SHARE_PCT = 1.0
MIN_PACE_FAMILIES = 3  # fewer families that large: the pace is the rest of the step's
SIGNIFICANCE = 0.01  # two-sided p-value below which step samples differ
MIN_PAIRED_STEPS = 8  # fewer timed steps cannot reach SIGNIFICANCE: wall time is then judged by its band alone
# metric name -> (how to read it from a Result, its kind: which tolerance applies)
METRICS = {
    "gpu_minutes_per_1000_samples": (lambda r: r.kernels.gpu_minutes_per_1000_samples, "gpu"),
    "minutes_per_1000_samples": (lambda r: r.timing.minutes_per_1000_samples, "wall"),
    "max_reserved_mib": (lambda r: r.memory.max_reserved_mib, "memory"),
    "max_allocated_mib": (lambda r: r.memory.max_allocated_mib, "memory"),
}


@dataclass(frozen=True)
class Tolerances:
    gpu_time_pct: float = DEFAULT_GPU_TIME_TOLERANCE_PCT  # GPU-minutes per 1000 samples
    time_pct: float = DEFAULT_TIME_TOLERANCE_PCT  # wall minutes: the least noise band
    memory_pct: float = DEFAULT_MEMORY_TOLERANCE_PCT
    limited_gpu_time_pct: float = DEFAULT_LIMITED_GPU_TIME_TOLERANCE_PCT  # clock held down, another GPU
    family_pct: float = DEFAULT_FAMILY_TOLERANCE_PCT  # a kernel family, same GPU
    other_gpu_family_pct: float = DEFAULT_OTHER_GPU_FAMILY_TOLERANCE_PCT  # a kernel family, another GPU

    def of(self, kind: str) -> float:
        return {"gpu": self.gpu_time_pct, "wall": self.time_pct, "memory": self.memory_pct}[kind]


@dataclass
class MetricFinding:
    """A metric of both runs: its change and the threshold it was judged against (for wall time, the noise band,
    and the step samples' p-value where there were enough to test)."""

    metric: str
    kind: str  # gpu | wall | memory
    before: float
    after: float
    change_pct: float
    threshold_pct: float
    basis: str  # what the threshold is: "tolerance", "clock-limited tolerance", "noise band", "baseline's spread"
    verdict: str  # worse | better | same
    p_value: float | None = None


@dataclass
class KernelMove:
    """A kernel of a family whose time moved by 1% or more, appeared (before None) or vanished (after None):
    milliseconds per micro-step, averaged over the epoch, named without templates or namespaces."""

    kernel: str
    before_ms: float | None
    after_ms: float | None


@dataclass
class FamilyFinding:
    """A kernel family of both runs: GPU-minutes per 1000 samples, its share of the baseline's step, its change
    against the GPU's pace (the median change of the other large families, or of the rest of the step), and the
    threshold: the tolerance of a same-GPU or other-GPU baseline, or FAMILY_NOISE_Z times the error of the family's
    time from its measured repeat spread where that is larger; a family under FAMILY_SHARE_PCT of the step that no
    repeat measured is not judged (a few microseconds of an optimizer's kernels, traced once, jitter by several %)."""

    family: str
    before: float
    after: float
    share_pct: float  # of the baseline's step (of this run's where the baseline had none)
    step_pct: float  # what it moved, in % of the baseline's step
    pace_pct: float  # the GPU's pace in the other families
    change_pct: float | None  # against that pace; None where it is new
    # What a change must exceed to count; None where the family is under FAMILY_SHARE_PCT of the step and no
    # repeat measured its noise (then it is not judged, but where it appears or vanishes).
    threshold_pct: float | None
    basis: str  # "same GPU" | "another GPU" | "repeat noise" | "not repeated"
    noise_pct: float | None  # both runs' errors of the family's time combined; None where neither measured it
    verdict: str
    kernels: list[KernelMove] = field(default_factory=list)

    @property
    def total_change_pct(self) -> float | None:
        """Its own change, the GPU's pace included; None where it is new."""
        return 100 * (self.after / self.before - 1) if self.before else None


@dataclass
class GroupMove:
    """A group of activations and temporaries alive at the peak (by the line that allocated them) that moved by
    MIN_CATEGORY_MOVE_MIB or more, appeared (before None) or vanished (after None), MiB."""

    where: str
    before_mib: float | None
    after_mib: float | None


@dataclass
class CategoryMove:
    """A memory category at the allocated peak (sftbench.memory) that moved by MIN_CATEGORY_MOVE_MIB or more, MiB;
    for activations and temporaries, the groups that moved most."""

    category: str  # a name of result.MEMORY_CATEGORIES
    before_mib: float
    after_mib: float
    groups: list[GroupMove] = field(default_factory=list)


@dataclass
class CountChange:
    """How many more (or fewer) times a micro-step called a torch operator or CUDA API function."""

    what: str  # "torch operators" | "CUDA API calls"
    tokens: int  # of the micro-step compared: the longest both runs traced
    name: str
    change: int


@dataclass
class Note:
    """Why something was or was not judged as it was; `code` names it (sftbench.render says it in words)."""

    code: str
    detail: dict = field(default_factory=dict)


@dataclass
class Verdict:
    verdict: str  # regression | improvement | pass | no-baseline | not-comparable
    kinds: list[str] = field(default_factory=list)  # of a regression: kernel, host-side, wall-time, memory, OOM
    metrics: list[MetricFinding] = field(default_factory=list)
    families: list[FamilyFinding] = field(default_factory=list)  # every family of either run
    notes: list[Note] = field(default_factory=list)
    counts: list[CountChange] = field(default_factory=list)
    memory: list[CategoryMove] = field(default_factory=list)  # where both runs sorted their peak by category
    versions: dict[str, list[str | None]] = field(default_factory=dict)  # package -> [baseline's, now]
    settings: dict[str, list] = field(default_factory=dict)  # driver, CUDA, environment variable -> [before, now]
    wall_judged: bool = True  # False where both measured wall time but not on one known host

    @property
    def worse_families(self) -> list[str]:
        return [f.family for f in self.families if f.verdict == "worse"]

    @property
    def recorded_as_text(self) -> bool:
        """A verdict of a schema-1 run record, which kept only its label and explanation (storage.schema)."""
        return any(note.code == "recorded as text" for note in self.notes)


def compare(result: Result, baseline: Result | None, tolerances: Tolerances = Tolerances()) -> Verdict:
    if baseline is None:
        return Verdict("no-baseline", notes=[Note("no baseline", {"gpu": result.machine.get("gpu")})])
    old = baseline
    differ = {"versions": _version_changes(old, result), "settings": _setting_changes(old, result)}
    # Outcomes first: an OOM while building the model leaves no kernel or backend to compare.
    if (old.outcome, result.outcome) == ("ok", "oom"):
        return Verdict("regression", ["OOM"], notes=[Note("now OOM", {"message": result.message})], **differ)
    if (old.outcome, result.outcome) == ("oom", "ok"):
        return Verdict("improvement", notes=[Note("now fits")], **differ)
    if old.outcome != "ok" or result.outcome != "ok":
        return Verdict("pass", notes=[Note("same outcome", {"outcome": result.outcome})], **differ)
    setups = [{"attention": r.attention, "backend": r.quantization_backend, "mode": r.mode} for r in (old, result)]
    if len({(s["attention"], _without_versions(s["backend"]), s["mode"]) for s in setups}) > 1:
        return Verdict("not-comparable", notes=[Note("setup differs", {"baseline": setups[0], "now": setups[1]})],
                       **differ)
    if old.machine.get("gpu") != result.machine.get("gpu"):
        return _another_model(old, result, tolerances, differ)
    same_host = _same_host(old, result)
    same_gpu = _same_gpu(old, result)
    too_noisy = (old.timing.wall_noise_pct or 0.0) >= MAX_WALL_NOISE_PCT
    limited = (bool(old.kernels.clock_limits) or bool(result.kernels.clock_limits)) and not same_gpu
    metrics = [finding for name, (read, kind) in METRICS.items()
               if (finding := _metric(name, kind, read(old), read(result), old, result, tolerances, limited,
                                      same_host and not too_noisy))]
    notes = _missing_gpu_time(old, result, same_host)
    wall_judged = same_host or None in (old.timing.minutes_per_1000_samples, result.timing.minutes_per_1000_samples)
    if not wall_judged:
        notes.append(Note("wall time not judged", {"host": "another" if old.machine.get("host") else "unknown"}))
    elif same_host and too_noisy:
        notes.append(Note("wall time too noisy", {"spread_pct": old.timing.wall_noise_pct,
                                                  "max_pct": MAX_WALL_NOISE_PCT}))
    notes += _clock_change(old, result) + _host_pace(old, result, metrics)
    if limited and any(f.kind == "gpu" for f in metrics):
        notes.append(_clock_limits(old, result))
    families, family_notes = compare_families(old, result, tolerances, same_gpu)
    notes += family_notes + _missing_categories(old, result, metrics)
    return Verdict(_overall(metrics + families), _kinds(metrics, families), metrics, families, notes, host_work_changes(old, result),
                   category_moves(old, result), wall_judged=wall_judged, **differ)


def _another_model(old: Result, new: Result, tolerances: Tolerances, differ: dict) -> Verdict:
    """Against a baseline of another GPU model of the same compute capability (storage.baselines): memory only.
    The tensors are the same, so max allocated and the categories compare; max reserved only where both runs
    stayed at or under RESERVED_COMPARABLE_PCT of the smaller card, since near its capacity an allocator keeps
    less cached. Speed differs between GPU models and is not judged."""
    cards = [r.machine.get("gpu_memory_mib") for r in (old, new)]
    reserved = [r.memory.max_reserved_mib for r in (old, new)]
    comparable = None not in cards + reserved and max(reserved) <= RESERVED_COMPARABLE_PCT / 100 * min(cards)
    notes = [Note("another GPU model", {"gpu": old.machine.get("gpu"), "capability": compute_capability(old.machine)})]
    if not comparable:
        notes.append(Note("reserved near capacity", {"max_pct": RESERVED_COMPARABLE_PCT}))
    metrics = [finding for name, (read, kind) in METRICS.items()
               if kind == "memory" and (comparable or name != "max_reserved_mib")
               and (finding := _metric(name, kind, read(old), read(new), old, new, tolerances, False, False))]
    notes += _missing_categories(old, new, metrics)
    return Verdict(_overall(metrics), _kinds(metrics, []), metrics, notes=notes, memory=category_moves(old, new),
                   wall_judged=False, **differ)


def wall_time_alone(verdict: Verdict) -> bool:
    """A regression of wall time alone (host-side or wall-time; no kernel, memory or OOM finding): the one kind a
    passing state of the host can make by itself, so the runner measures it once more before it fails a row."""
    return verdict.verdict == "regression" and bool(verdict.kinds) and set(verdict.kinds) <= {"host-side", "wall-time"}


def remeasured(first: Verdict, second: Verdict) -> Verdict:
    """The verdict of a second measurement of a configuration whose first regressed in wall time alone: the
    second's, with a note of the first's wall-time change (and its "host pace" note's detail, where it had one) and
    whether the second was worse in wall time too."""
    wall = next(f for f in first.metrics if f.kind == "wall")
    detail = {"change_pct": wall.change_pct, "threshold_pct": wall.threshold_pct,
              "host_pace": next((note.detail for note in first.notes if note.code == "host pace"), None),
              "confirmed": any(f.kind == "wall" and f.verdict == "worse" for f in second.metrics)}
    return replace(second, notes=[Note("re-measured", detail), *second.notes])


def _overall(findings: list[MetricFinding | FamilyFinding]) -> str:
    """A regression where any finding is worse, else an improvement where any is better, else a pass."""
    verdicts = {f.verdict for f in findings}
    return "regression" if "worse" in verdicts else "improvement" if "better" in verdicts else "pass"


def _metric(name: str, kind: str, before, after, old: Result, new: Result, tolerances: Tolerances, limited: bool,
            judge_wall: bool) -> MetricFinding | None:
    """A metric's finding; None where either run lacks it or (wall time) it is not judged: another host, or a
    baseline too noisy."""
    if before is None or after is None:
        return None
    threshold, basis, p_value = tolerances.of(kind), "tolerance", None
    if kind == "gpu" and limited and tolerances.limited_gpu_time_pct > threshold:
        threshold, basis = tolerances.limited_gpu_time_pct, "clock-limited tolerance"
    if kind == "wall":
        if not judge_wall:
            return None
        threshold, basis = max((threshold, "noise band"), (old.timing.wall_noise_pct or 0.0, "baseline's spread"))
        p_value = step_samples_p_value(old, new)
    change = (after - before) / before * 100 if before else 0.0
    beyond = abs(change) > threshold and (p_value is None or p_value < SIGNIFICANCE)
    verdict = "same" if not beyond else "worse" if change > 0 else "better"
    return MetricFinding(name, kind, before, after, change, threshold, basis, verdict, p_value)


def _kinds(metrics: list[MetricFinding], families: list[FamilyFinding]) -> list[str]:
    """What kind of regression: kernel (GPU time or a family up), host-side (wall time up with GPU time measured
    and flat), wall-time (no GPU time to tell them apart), memory."""
    worse = {f.kind for f in metrics if f.verdict == "worse"}
    kinds = []
    if "gpu" in worse or any(f.verdict == "worse" for f in families):
        kinds.append("kernel")
    if "wall" in worse:
        kinds.append("host-side" if any(f.kind == "gpu" for f in metrics) else "wall-time")
    if "memory" in worse:
        kinds.append("memory")
    return kinds


def compare_families(old: Result, new: Result, tolerances: Tolerances,
                     same_gpu: bool) -> tuple[list[FamilyFinding], list[Note]]:
    """Each kernel family of either run against the baseline's, both classified by today's rules
    (kernel_families.toml), and notes on what was not judged or how."""
    before, now = kernels.epoch_families(old.kernels), kernels.epoch_families(new.kernels)
    if now is None:
        return [], []
    if before is None:
        return [], [Note("no families in the baseline")]
    old_step, new_step = sum(before.values()), sum(now.values())
    spreads = [kernels.family_noise_pct(r.kernels) for r in (old, new)]
    base = (tolerances.family_pct, "same GPU") if same_gpu else (tolerances.other_gpu_family_pct, "another GPU")
    ratios = {f: now[f] / before[f] for f in before.keys() & now.keys() if before[f] > 0}
    large = {f for f in ratios if 100 * before[f] / old_step >= FAMILY_SHARE_PCT}
    micro_steps = new.kernels.micro_steps
    samples = new.case.get("samples") or 1000
    findings = []
    for family in (f for f in kernels.families() if f in before or f in now):
        b, n = before.get(family, 0.0), now.get(family, 0.0)
        share = 100 * (b / old_step if b else n / new_step)
        others = [ratios[f] for f in large - {family}]
        pace = median(others) if len(others) >= MIN_PACE_FAMILIES else \
            (new_step - n) / (old_step - b) if old_step > b else 1.0
        change = 100 * (n / b / pace - 1) if b else None
        epoch = (old.kernels, new.kernels) if share >= FAMILY_SHARE_PCT else ()  # a small family: one step's error
        combined = _combined_error(spreads, family, epoch)
        threshold, basis = base
        if combined is None and share < FAMILY_SHARE_PCT:  # no repeat measured it: too small for the tolerance alone
            threshold, basis = None, "not repeated"
        elif combined is not None and FAMILY_NOISE_Z * combined > threshold:
            threshold, basis = FAMILY_NOISE_Z * combined, "repeat noise"
        if b and n:
            beyond = threshold is not None and abs(change) > threshold
        else:  # appeared or vanished
            beyond = share >= FAMILY_SHARE_PCT
        verdict = "same" if not beyond else "worse" if n > b * pace else "better"
        findings.append(FamilyFinding(
            family, *(minutes_per_1000_samples(seconds, samples) for seconds in (b, n)), share, 100 * (n - b) / old_step,
            100 * (pace - 1), change, threshold, basis, combined, verdict,
            _kernel_moves(kernels.epoch_kernels(old.kernels, family), kernels.epoch_kernels(new.kernels, family),
                          micro_steps)))
    notes = [] if spreads[0] or spreads[1] else [Note("family noise not measured", {"share_pct": FAMILY_SHARE_PCT})]
    return findings, notes


def _combined_error(spreads: list[dict[str, float]], family: str, records: tuple = ()) -> float | None:
    """Both runs' errors of a family's time, combined as independent: each run's repeat spread of the family's share
    of a step (a run that did not measure it counts as the other's), carried to its epoch's time where the runs'
    kernel `records` are given (kernels.epoch_error_factor). None where neither run measured the spread."""
    measured = [spread[family] for spread in spreads if family in spread]
    if not measured:
        return None
    errors = [spread.get(family, measured[0]) for spread in spreads]
    if records:
        errors = [error * kernels.epoch_error_factor(record, family) for error, record in zip(errors, records)]
    return math.sqrt(sum(error * error for error in errors))


def _kernel_moves(before: dict[str, float], now: dict[str, float], micro_steps: float) -> list[KernelMove]:
    """The family's kernels that moved most (up to three, by 1% or more), appeared or vanished, in ms per
    micro-step."""
    before, now = _by_label(before), _by_label(now)
    ms = 1000 / micro_steps if micro_steps else 0.0
    moved = sorted(before.keys() & now.keys(), key=lambda name: -abs(now[name] - before[name]))[:3]
    return ([KernelMove(name, before[name] * ms, now[name] * ms) for name in moved
             if abs(now[name] - before[name]) >= 0.01 * before[name]]
            + [KernelMove(name, None, now[name] * ms) for name in sorted(now.keys() - before.keys())]
            + [KernelMove(name, before[name] * ms, None) for name in sorted(before.keys() - now.keys())])


def kernel_label(name: str) -> str:
    """A kernel's name in a finding: without its template arguments and namespaces (flash-attn 2.6 and 2.8 name
    the same kernels with and without `flash::`)."""
    return name.split("<", 1)[0].rsplit("::", 1)[-1]


def _by_label(seconds: dict[str, float]) -> dict[str, float]:
    labelled: dict[str, float] = {}
    for name, value in seconds.items():
        labelled[kernel_label(name)] = labelled.get(kernel_label(name), 0.0) + value
    return labelled


def host_work_changes(old: Result, new: Result) -> list[CountChange]:
    """The torch operators and CUDA API calls whose counts per micro-step changed, each in the longest micro-step both
    counted them (one untimed counted step of the longest batch, sftbench.trainer; results before 2026-12-07 counted
    operators in every traced step): exact counts, evidence of what the host did differently, never a verdict of
    their own."""
    changes = []
    for what, read in (("torch operators", lambda s: s.operators or None), ("CUDA API calls", lambda s: s.api_calls)):
        counts = [{s.tokens: read(s) for s in r.kernels.steps if s.tokens > 0 and s.repeat_of is None
                   and read(s) is not None} for r in (old, new)]
        common = counts[0].keys() & counts[1].keys()
        if not common:
            continue
        tokens = max(common)
        before, now = (c[tokens] for c in counts)
        delta = {name: now.get(name, 0) - before.get(name, 0) for name in before.keys() | now.keys()}
        changes += [CountChange(what, tokens, name, delta[name])
                    for name in sorted((n for n, d in delta.items() if d), key=lambda n: (-abs(delta[n]), n))]
    return changes


# The categories are exact byte counts, so any move is real; under a MiB it is a rounding of an allocation.
MIN_CATEGORY_MOVE_MIB = 1.0
GROUP_MOVES = 3


def category_moves(old: Result, new: Result) -> list[CategoryMove]:
    """The memory categories at the peak that moved, largest move first and the allocator's slack last: exact bytes,
    evidence of where memory grew or shrank (a verdict is made on the peaks). Slack is not a holder of tensors: where
    a category grew, the allocator's rounding of the new blocks moves it too, by more than the growth on an H100 at
    2048-8192 tokens (+550 MiB of activations, +637 MiB of slack), and the growth is what names the change."""
    before, now = old.memory.categories, new.memory.categories
    if before is None or now is None:
        return []
    mib_before, mib_now = before.by_name(), now.by_name()
    moves = [CategoryMove(name, mib_before[name], mib_now[name]) for name in mib_before
             if abs(mib_now[name] - mib_before[name]) >= MIN_CATEGORY_MOVE_MIB]
    for move in moves:
        if move.category == "activations and temporaries":
            move.groups = _group_moves({g.where: g.mib for g in before.groups}, {g.where: g.mib for g in now.groups})
    return sorted(moves, key=lambda m: (m.category == SLACK, -abs(m.after_mib - m.before_mib)))


def _group_moves(before: dict[str, float], now: dict[str, float]) -> list[GroupMove]:
    """The groups that moved most (GROUP_MOVES at most): a group kept by only one run counts as appeared or gone."""
    changes = {where: now.get(where, 0.0) - before.get(where, 0.0) for where in before.keys() | now.keys()}
    largest = sorted((w for w, c in changes.items() if abs(c) >= MIN_CATEGORY_MOVE_MIB), key=lambda w: -abs(changes[w]))
    return [GroupMove(where, before.get(where), now.get(where)) for where in largest[:GROUP_MOVES]]


def step_samples_p_value(old: Result, new: Result) -> float | None:
    """Two-sided p-value that the timed steps of the two runs differ in speed: the Wilcoxon signed-rank test
    on the log-ratios of paired steps where both timed the same batches (the quick mode does), else the
    Mann-Whitney U test on seconds per token. None where either run timed fewer than MIN_PAIRED_STEPS."""
    a, b = old.timing, new.timing
    if min(len(a.step_durations_s), len(b.step_durations_s)) < MIN_PAIRED_STEPS:
        return None
    import numpy as np  # here: the report and the history page read verdicts without numpy
    from scipy import stats

    if a.step_tokens == b.step_tokens:
        ratios = np.log(b.step_durations_s) - np.log(a.step_durations_s)
        return 1.0 if not ratios.any() else float(stats.wilcoxon(ratios).pvalue)
    per_token = [np.divide(t.step_durations_s, np.maximum(t.step_tokens, 1)) for t in (a, b)]
    return float(stats.mannwhitneyu(*per_token).pvalue)


def _missing_gpu_time(old: Result, new: Result, same_host: bool) -> list[Note]:
    """Why GPU time was not compared, where one side has it and the other does not."""
    has = [r.kernels.gpu_minutes_per_1000_samples is not None for r in (old, new)]
    if has[0] == has[1]:
        return []
    return [Note("no GPU time", {"in": "baseline" if has[1] else "this run", "clock": new.kernels.clock,
                                 "wall_judged": same_host})]


def _missing_categories(old: Result, new: Result, metrics: list[MetricFinding]) -> list[Note]:
    """Why a memory change names no category, where one side has its memory by category and the other not."""
    has = [r.memory.categories is not None for r in (old, new)]
    moved = any(f.kind == "memory" and f.verdict != "same" for f in metrics)
    return [Note("no memory categories", {"in": "baseline" if has[1] else "this run"})] if moved and has[0] != has[1] else []


def _same_host(old: Result, new: Result) -> bool:
    return bool(set(old.machine.get("host") or ()) & set(new.machine.get("host") or ()))


def _same_gpu(old: Result, new: Result) -> bool:
    return old.machine.get("gpu_uuid") is not None and old.machine.get("gpu_uuid") == new.machine.get("gpu_uuid")


def _clock_change(old: Result, new: Result) -> list[Note]:
    """The GPU's SM clock in the traced steps (median of their means), where both runs recorded it and it moved
    by 1% or more."""
    before, now = (median(clocks) if (clocks := [s.sm_mhz for s in r.kernels.steps if s.sm_mhz]) else None
                   for r in (old, new))
    if before is None or now is None or abs(now - before) < 0.01 * before:
        return []
    return [Note("SM clock moved", {"before_mhz": float(before), "now_mhz": float(now)})]


def _host_pace(old: Result, new: Result, metrics: list[MetricFinding]) -> list[Note]:
    """The host's own pace between the timed steps of both runs (Timing.host_probe_ms), beside a wall-time
    change: whether the host itself was slower or faster, which the verdict alone cannot tell from the software."""
    wall = [f for f in metrics if f.kind == "wall" and f.verdict != "same"]
    before, now = old.timing.host_probe_ms, new.timing.host_probe_ms
    if not wall or before is None or now is None:
        return []
    return [Note("host pace", {"before_ms": before, "now_ms": now})]


def _clock_limits(old: Result, new: Result) -> Note:
    """Why GPU time is judged at the clock-limited tolerance: what held the clock down, in how many traced steps."""
    return Note("clock limited", {
        "now": new.kernels.clock_limits, "now_steps": len(new.kernels.steps),
        "baseline": old.kernels.clock_limits, "baseline_steps": len(old.kernels.steps),
        "gpu": "unknown" if old.machine.get("gpu_uuid") is None else "another"})


def _version_changes(old: Result, new: Result) -> dict[str, list[str | None]]:
    return {name: [old.versions.get(name), version] for name, version in new.versions.items()
            if old.versions.get(name) != version and name != "sftbench"}


def _setting_changes(old: Result, new: Result) -> dict[str, list]:
    """Driver, CUDA and the environment variables of environment.SETTINGS that differ; a baseline written
    before sftbench recorded the variables says nothing about them."""
    changes = {name: [old.machine.get(name), new.machine.get(name)] for name in ("driver", "cuda")
               if old.machine.get(name) != new.machine.get(name)}
    if "settings" in old.machine:
        before, now = old.machine["settings"], new.machine.get("settings", {})
        changes.update({name: [before.get(name, "unset"), now.get(name, "unset")]
                        for name in set(before) | set(now) if before.get(name) != now.get(name)})
    return changes


def _without_versions(backend: str | None) -> str | None:
    """'bitsandbytes 0.50.2 / Linear4bit nf4' -> 'bitsandbytes / Linear4bit nf4': an upgrade is compared, not excluded."""
    return None if backend is None else re.sub(r" \d+(\.\w+)+", "", backend)
