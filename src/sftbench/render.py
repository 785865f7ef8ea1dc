"""The one place where results, verdicts and runs become text: a result's line, a verdict's label and its
explanation, and the summary of a run. Everything else reads their fields."""

from __future__ import annotations

from sftbench.result import SLACK, Metrics
from sftbench.verdicts import (
    CategoryMove,
    CountChange,
    FamilyFinding,
    MetricFinding,
    Note,
    Verdict,
)

MAX_COUNTS = 8  # operator or API names shown per line of counts


def describe(metrics: Metrics) -> str:
    """One line: the outcome, or speed and memory with the kernel that ran."""
    m = metrics
    if m.outcome != "ok":
        return f"{m.outcome.upper()} ({m.message[:160]})"
    reserved = f"{m.max_reserved_mib:.0f} MiB reserved" if m.max_reserved_mib is not None else \
        f"{m.max_rss_mib:.0f} MiB host RSS"
    gpu = "" if m.gpu_minutes_per_1000_samples is None else \
        f" ({m.gpu_minutes_per_1000_samples:.2f} GPU, {m.gpu_busy_pct:.0f}% busy)"
    return (f"{m.minutes_per_1000_samples:.2f} min/1000 samples{gpu} ({m.mode}), {m.tokens_per_s:.0f} tok/s, "
            f"{reserved}, {m.attention}, wall {m.wall_s or 0.0:.1f} s")


def label(verdict: Verdict) -> str:
    """The verdict, and for a regression its kinds, the worse families named: `kernel (attention backward)
    regression`, `kernel and host-side regression, memory regression`."""
    legacy = _legacy(verdict)
    if legacy is not None:
        return legacy["label"]
    if verdict.verdict != "regression" or not verdict.kinds:
        return verdict.verdict
    families = verdict.worse_families
    words = [f"kernel ({', '.join(families)})" if kind == "kernel" and families else kind for kind in verdict.kinds]
    if "kernel" in verdict.kinds and "host-side" in verdict.kinds:
        words[0:2] = [f"{words[0]} and host-side"]
    return ", ".join(f"{word} regression" for word in words)


def explain(verdict: Verdict) -> list[str]:
    """What led to the verdict, a line each: notes, the host's work that changed, each metric and family beyond
    its threshold, the versions and settings that differ from the baseline's."""
    legacy = _legacy(verdict)
    if legacy is not None:
        return [line.strip() for line in legacy["lines"]]
    lines = [note_text(note) for note in verdict.notes]
    lines += counts_text(verdict.counts)
    lines += [metric_text(f) for f in verdict.metrics if f.verdict != "same"]
    if any(f.kind == "memory" and f.verdict != "same" for f in verdict.metrics) and verdict.memory:
        lines.append(memory_text(verdict.memory))
    # A family that grew makes the others shrink against the GPU's pace where it is one of them: name only the
    # grown ones then.
    shown = [f for f in verdict.families if f.verdict == "worse"] or [f for f in verdict.families if f.verdict != "same"]
    lines += [family_text(f) for f in shown]
    for title, changes in (("versions", verdict.versions), ("settings", verdict.settings)):
        if changes:
            lines.append(f"{title} that differ from the baseline's: " + ", ".join(
                f"{name} {old} -> {new}" for name, (old, new) in sorted(changes.items())))
    return lines


def message(verdict: Verdict, case: str) -> str:
    """The verdict as a failing row says it: the case and the label, then the explanation indented."""
    return "\n".join([f"{case}: {label(verdict)}", *(f"  {line}" for line in explain(verdict))])


def metric_text(f: MetricFinding) -> str:
    if f.kind != "wall":
        limit = f"{f.basis} {f.threshold_pct:g}%"
    else:
        limit = f"{f.basis} {f.threshold_pct:.3g}%" + ("" if f.p_value is None else f", step samples p={f.p_value:.2g}")
    return f"{f.metric}: {f.before:.6g} -> {f.after:.6g} ({f.change_pct:+.1f}%, {limit})"


def memory_text(moves: list[CategoryMove]) -> str:
    """Where the memory at the peak moved: `at the peak: activations and temporaries +569 MiB (`x = f(y)`
    (modeling.py:212) +512 MiB), gradients -2 MiB`."""
    parts = []
    for move in moves:
        groups = [f"{g.where} {_mib(g.before_mib, g.after_mib)}" for g in move.groups]
        parts.append(f"{move.category} {move.after_mib - move.before_mib:+.0f} MiB"
                     + (f" ({', '.join(groups)})" if groups else ""))
    if [move.category for move in moves] == [SLACK]:
        parts.append("every tensor the same: the allocator holds more (an allocator change)")
    return "at the peak: " + ", ".join(parts)


def _mib(before: float | None, after: float | None) -> str:
    if before is None:
        return f"new, {after:.0f} MiB"
    if after is None:
        return f"gone, {before:.0f} MiB"
    return f"{after - before:+.0f} MiB"


def family_text(f: FamilyFinding) -> str:
    if not f.before or not f.after:
        text = (f"{f.family}: {'new' if f.after else 'gone'}, {f.share_pct:.2g}% of the step "
                f"({f.before:.4g} -> {f.after:.4g} GPU-min/1000)")
    else:
        threshold = "not judged: no repeat measured it" if f.threshold_pct is None else \
            f"threshold {f.threshold_pct:.3g}%, " + (
                f"{f.noise_pct:.2g}% repeat noise" if f.basis == "repeat noise" else f"{f.basis}")
        text = (f"{f.family} {f.change_pct:+.1f}% against the GPU's pace ({f.total_change_pct:+.1f}% "
                f"in all, {f.share_pct:.2g}% of the step, pace {f.pace_pct:+.1f}%; {threshold})")
    moves = [f"{m.kernel} {m.before_ms:.3g} -> {m.after_ms:.3g} ms/step" for m in f.kernels
             if m.before_ms is not None and m.after_ms is not None]
    moves += [f"new {m.kernel} {m.after_ms:.3g} ms/step" for m in f.kernels if m.before_ms is None]
    moves += [f"gone {m.kernel} ({m.before_ms:.3g} ms/step)" for m in f.kernels if m.after_ms is None]
    return text + (": " + "; ".join(moves) if moves else "")


def counts_text(counts: list[CountChange]) -> list[str]:
    """A line per kind of count: `torch operators per micro-step (2048 tokens): -64 flash_attn::..., ...`."""
    lines = []
    for what in dict.fromkeys(c.what for c in counts):
        chosen = [c for c in counts if c.what == what]
        shown = ", ".join(f"{c.change:+d} {c.name}" for c in chosen[:MAX_COUNTS])
        more = f" and {len(chosen) - MAX_COUNTS} more" if len(chosen) > MAX_COUNTS else ""
        lines.append(f"{what} per micro-step ({chosen[0].tokens} tokens): {shown}{more}")
    return lines


def note_text(note: Note) -> str:
    d = note.detail
    if note.code == "no GPU time":
        speed = "speed is judged on wall time alone" if d["wall_judged"] else "speed is not judged"
        return ("the baseline has no GPU kernel time (it predates that metric): " if d["in"] == "baseline" else
                f"this run has no GPU kernel time ({d['clock']}): ") + speed
    if note.code == "no memory categories":
        return ("which category of memory moved is not known: " +
                ("the baseline has no memory by category (written before sftbench recorded it): write it again to see it"
                 if d["in"] == "baseline" else "this run has no memory by category (it is taken on a GPU only)"))
    if note.code == "wall time not judged":
        where = "it ran on another host" if d["host"] == "another" else "its host is not recorded"
        return (f"wall time is not judged: {where}, and between hosts of one GPU model it moves by up to 46% "
                "(a host-bound step runs as fast as the host's CPUs let it)")
    if note.code == "clock limited":
        gpus = "on another GPU" if d["gpu"] == "another" else "the baseline's GPU is not recorded"
        return (f"the GPU held its clock down in the traced steps (this run: {_limits(d['now'], d['now_steps'])}; "
                f"the baseline: {_limits(d['baseline'], d['baseline_steps'])}), {gpus}: such kernel time differs "
                "between GPUs of one model, so GPU time is judged at the clock-limited tolerance")
    if note.code == "setup differs":
        old, new = d["baseline"], d["now"]
        return (f"baseline ran attention={old['attention']}, backend={old['backend']}, mode={old['mode']}; this run "
                f"attention={new['attention']}, backend={new['backend']}, mode={new['mode']}")
    if note.code == "SM clock moved":
        change = 100 * (d["now_mhz"] / d["before_mhz"] - 1)
        return (f"GPU SM clock in the traced steps: {d['before_mhz']:.0f} -> {d['now_mhz']:.0f} MHz "
                f"({change:+.1f}%, median of the steps' means)")
    if note.code == "re-measured":
        pace = "" if d["host_pace"] is None else f", the host's own pace {_pace_change_pct(d['host_pace']):+.1f}%"
        first = f"wall time alone was worse ({d['change_pct']:+.1f}% against the {d['threshold_pct']:g}% band{pace})"
        return (f"{first}; measured once more, in a fresh process, it was worse again" if d["confirmed"] else
                f"{first} in a first measurement, not in a second, in a fresh process: the verdict is the second's")
    if note.code == "host pace":
        return (f"the host's own pace between timed steps (a fixed burst of kernel launches): {d['before_ms']:.2f} -> "
                f"{d['now_ms']:.2f} ms ({_pace_change_pct(d):+.1f}%)")
    return NOTES[note.code].format(**d)


def _pace_change_pct(detail: dict) -> float:
    """How much slower (+) the host's own pace was: a "host pace" note's detail."""
    return 100 * (detail["now_ms"] / detail["before_ms"] - 1)


NOTES = {
    "another GPU model": ("memory only, against a baseline of {gpu} (compute capability {capability}: the same "
                          "tensors); speed is not compared across GPU models"),
    "reserved near capacity": ("max reserved not judged: a run reserved more than {max_pct:g}% of the smaller card, "
                               "where an allocator keeps less cached"),
    "no baseline": "no baseline for {gpu}",
    "now OOM": "fitted in the baseline, now OOMs: {message}",
    "now fits": "OOMed in the baseline, now fits",
    "same outcome": "outcome {outcome} as in the baseline",
    "wall time too noisy": ("wall time is not judged: the baseline's own steps spread {spread_pct:.0f}% (at least "
                            "{max_pct:g}%), too noisy to judge; rewrite the baseline on a quieter host"),
    "no families in the baseline": ("the baseline has no kernel families (written before sftbench recorded them): "
                                    "GPU time is judged on the step total"),
    "family noise not measured": ("neither run measured how much its kernel families repeat (written before sftbench "
                                  "traced repeats): only families of {share_pct:g}% of the step or more are judged"),
}


def _note(configuration, code: str) -> Note | None:
    """The configuration's verdict's note of this code, if it has one ("another GPU model": judged against a
    baseline of another GPU model; "re-measured": measured twice, its wall time alone having regressed first)."""
    verdict = configuration.verdict
    return None if verdict is None else next((n for n in verdict.notes if n.code == code), None)


def wall_not_judged(configurations) -> int:
    """How many configurations had GPU time and memory judged but not wall time, their baseline's host not this one
    (those judged against another GPU model's baseline are counted by across_gpu_models)."""
    return sum(c.verdict is not None and not c.verdict.wall_judged and not _note(c, "another GPU model")
               for c in configurations)


def across_gpu_models(configurations) -> str | None:
    """A line on the configurations judged on memory alone against baselines of other GPU models, if any."""
    gpus = [note.detail["gpu"] for c in configurations if (note := _note(c, "another GPU model"))]
    if not gpus:
        return None
    return (f"memory alone judged in {len(gpus)} of {len(configurations)} configurations: against baselines of "
            f"{', '.join(dict.fromkeys(map(str, gpus)))} (another GPU model of the same compute capability; baselines "
            "written on this GPU model judge speed too)")


def _limits(limits: dict[str, int] | None, steps: int) -> str:
    if limits is None:
        return "not recorded"
    return ", ".join(f"{name} in {n} of {steps} steps" for name, n in limits.items()) or "none"


def _legacy(verdict: Verdict) -> dict | None:
    """The label and lines of a verdict recorded as text (Verdict.recorded_as_text), else None."""
    return next((note.detail for note in verdict.notes if note.code == "recorded as text"), None)


def status(configuration) -> str:
    """A run record's configuration in a few words: its verdict's label, else what became of it."""
    return configuration.status if configuration.verdict is None else label(configuration.verdict)


def run_summary(record, skipped: int = 0, results: str = "no results folder") -> list[str]:
    """The `sftbench` section of a run (a storage.records.RunRecord): one verdict per configuration, naming every
    row it stands for; regressions, improvements and mismatches also say what changed; then the counts."""
    lines = []
    for c in record.configurations:
        lines.append(f"{c.rows[0]}: {describe(c.now)} -> {c.message or status(c)}")
        if len(c.rows) > 1:
            lines.append("  the same configuration: " + ", ".join(c.rows[1:]))
        if c.status in ("regression", "improvement", "not-comparable"):
            lines += [f"  {line}" for line in explain(c.verdict)]
        else:  # a pass judged on memory alone says against which GPU; one measured twice, what the first showed
            lines += [f"  {note_text(note)}" for code in ("another GPU model", "re-measured") if (note := _note(c, code))]
    statuses = [c.status for c in record.configurations]
    lines.append(", ".join([f"{statuses.count(s)} {s}" for s in dict.fromkeys(statuses)] + [f"{skipped} skipped"]))
    if unjudged := wall_not_judged(record.configurations):
        lines.append(f"wall time not judged in {unjudged} of {len(statuses)} configurations: their baselines ran "
                     "on another host or do not name theirs (GPU time and memory judged them; baselines "
                     "written on this host judge wall time too)")
    if across := across_gpu_models(record.configurations):
        lines.append(across)
    lines += [f"{name} ended without its report (it crashed): the configurations it finished are missing from "
              f"this summary and the run record; their results: {results}" for name in record.lost_parts]
    if record.interrupted:
        written = ", ".join(record.baselines_written) or "none"
        lines.append(f"the run was interrupted after {len(statuses)} configurations; baselines it rewrote: {written}")
    return lines
