"""Fidelity notes: where this run differs from the seed (memory beyond 10%, outcomes, within-table trends
that go the other way) and where its wall time and GPU kernel time disagree on a trend, each with a cause
where this run's own numbers or a memory diagnostic show one.

The seed is ms-swift's training benchmark (Dec 2023), whose tables sftbench reproduces.
"""

from __future__ import annotations

from statistics import median

from sftbench.catalog import Row, seed_tables
from sftbench.report.tables import number, ratio
from sftbench.report.values import SEED_GPU_MIB, neighbours, run_value, seed_value
from sftbench.result import SLACK, Result

MEMORY_NOTE_RATIO = 0.10  # a bf16 row whose reserved memory is off the seed's by more than this gets a note
TREND_MIN_CHANGE = 0.01  # a change between neighbouring rows smaller than this is no trend
NOT_MEASURED = "not yet measured"
# A step with more tokens whose time grows by less than this fraction of the token growth is host-bound.
HOST_BOUND_GROWTH = 0.8
# A step of a quarter of the tokens or fewer that still takes this share of the longest step's time is host-bound.
HOST_FLOOR_SHARE = 0.6
# A row whose GPU runs kernels for less than this share of its wall time spends most of it on the host.
HOST_BOUND_BUSY_PCT = 50


def fidelity_notes(results: dict[str, Result], diagnostics: dict[str, dict]) -> list[str]:
    """The Markdown lines of the notes: one table per kind of difference, or "None."."""
    lines = ["## Fidelity notes", "",
             "What differs from the seed, and where this run's wall time and GPU kernel time disagree. A cause "
             "is given where this run's own numbers or a memory diagnostic of its configuration show it; "
             f"otherwise it is {NOT_MEASURED}.", ""]
    for title, head, rows in (
        (f"Memory more than {MEMORY_NOTE_RATIO:.0%} off the seed (bf16 rows)",
         ["rows", "seed MiB", "MiB", "ratio"], _memory_notes(results, diagnostics)),
        ("Outcome differs from the seed", ["rows", "seed", "this run"], _outcome_notes(results)),
        ("Within-table trend goes the other way", ["table", "rows", "metric", "seed", "this run"],
         _trend_notes(results)),
        ("Wall time and GPU time disagree", ["table", "rows", "wall change", "GPU change"], _clock_notes(results)),
    ):
        lines += [f"### {title}", ""]
        if rows:
            lines += ["| " + " | ".join([*head, "cause"]) + " |", "|" + "---|" * (len(head) + 1)]
            lines += ["| " + " | ".join(cells) + " |" for cells in rows]
        else:
            lines.append("None.")
        lines.append("")
    return lines


def _by_configuration(results: dict[str, Result]) -> dict[tuple[str, float | None, str], list[Row]]:
    """Seed rows that have a result, grouped by (configuration, seed MiB, seed outcome): a configuration
    in several tables is noted once."""
    groups: dict[tuple[str, float | None, str], list[Row]] = {}
    for row in (row for t in seed_tables() for row in t.rows if row.spec.key in results):
        groups.setdefault((row.spec.key, row.seed_memory_mib, row.seed_outcome), []).append(row)
    return groups


def _node_ids(rows: list[Row]) -> str:
    return ", ".join(f"`{row.node_id}`" for row in rows)


def _memory_notes(results: dict[str, Result], diagnostics: dict[str, dict]) -> list[list[str]]:
    notes = []
    for (key, seed, _), rows in _by_configuration(results).items():
        now = run_value(results[key], "MiB")
        if rows[0].spec.quantization == "bf16" and seed and now and abs(now / seed - 1) > MEMORY_NOTE_RATIO:
            cause = _peak_composition(diagnostics[key]) if key in diagnostics else NOT_MEASURED
            notes.append([_node_ids(rows), number(seed, 0), number(now, 0), ratio(now, seed), cause])
    return notes


def _peak_composition(peak: dict, groups: int = 3) -> str:
    """What this run holds at its peak, from a memory diagnostic: the largest groups of live tensors."""
    largest = ", ".join(f"{mib} MiB {where}" for where, mib, _ in peak["groups_mib"][:groups])
    return (f"at the peak of its longest micro-step ({peak['batch_tokens']} tokens), above the "
            f"{peak['allocated_before_mib']} MiB held before it: {largest} (python -m sftbench profile ROW --memory)")


def _outcome_notes(results: dict[str, Result]) -> list[list[str]]:
    notes = []
    for (key, _, seed_outcome), rows in _by_configuration(results).items():
        result = results[key]
        if result.outcome != seed_outcome:
            fits = f", {number(result.memory.max_reserved_mib, 0)} MiB" if result.outcome == "ok" else ""
            notes.append([_node_ids(rows), seed_outcome.upper(), result.outcome.upper() + fits, _outcome_cause(result)])
    return notes


def _outcome_cause(result: Result) -> str:
    """A seed OOM that fits here: whether it would fit the seed's 80 GB card by its allocated peak
    (MemoryPeaks.card_need_mib), not by the reserved peak of a larger card's allocator."""
    memory, card = result.memory, result.machine.get("gpu_memory_mib")
    need = memory.card_need_mib
    if result.outcome != "ok" or need is None:
        return NOT_MEASURED
    held = (f"{number(memory.max_allocated_mib, 0)} MiB allocated at its peak and "
            f"{number(need - memory.max_allocated_mib, 0)} MiB outside PyTorch's allocator{_held_at_peak(memory)}")
    if need > SEED_GPU_MIB:
        return f"needs more than the seed's 80 GB ({SEED_GPU_MIB} MiB): {held}; this GPU has {card} MiB"
    return (f"fits the seed's 80 GB ({SEED_GPU_MIB} MiB): {held}; the {number(memory.max_reserved_mib, 0)} MiB "
            "reserved here is what this card's allocator kept, not what the case needs")


def _held_at_peak(memory) -> str:
    """What the allocated peak holds, by category, and its largest temporaries (sftbench.memory): whether the peak
    is the longest micro-step's activations or the optimizer step's states and temporaries. "" where not recorded."""
    categories = memory.categories
    if categories is None:
        return ""
    held = [f"{name} {number(mib, 0)}" for name, mib in categories.by_name().items() if mib >= 1 and name != SLACK]
    largest = f", of which {number(categories.groups[0].mib, 0)} MiB at {categories.groups[0].where}" \
        if categories.groups else ""
    return f"; at that peak, in MiB: {', '.join(held)}{largest}"


def _trend_notes(results: dict[str, Result]) -> list[list[str]]:
    """Neighbouring rows along a table's numeric column where the seed's order and this run's disagree."""
    notes = []
    for t, a, b in neighbours():
        for metric in ("min", "MiB"):
            seed, now = (seed_value(a, metric), seed_value(b, metric)), _run_values(a, b, metric, results)
            if None not in seed + now and _opposite(seed, now):
                notes.append([t.title, f"{a.id} → {b.id}", metric, _change(*seed, metric), _change(*now, metric),
                              _trend_cause(a, b, metric, results)])
    return notes


def _clock_notes(results: dict[str, Result]) -> list[list[str]]:
    """Neighbouring rows along a table's numeric column where this run's wall minutes and GPU minutes go
    opposite ways, or one changes by TREND_MIN_CHANGE or more while the other stays within it."""
    notes = []
    for t, a, b in neighbours():
        wall, gpu = _run_values(a, b, "min", results), _run_values(a, b, "GPU min", results)
        if None not in wall + gpu and (_opposite(wall, gpu) or _moves(wall) != _moves(gpu)):
            notes.append([t.title, f"{a.id} → {b.id}", _change(*wall, "min"), _change(*gpu, "GPU min"),
                          _clock_cause(a, b, results, _moves(gpu))])
    return notes


def _clock_cause(a: Row, b: Row, results: dict[str, Result], gpu_moves: bool) -> str:
    """The row whose GPU is busy for the smaller share of its wall time: below HOST_BOUND_BUSY_PCT, its wall
    time measures the host's work per step more than the GPU's. Else, where the GPU work is the same, the
    wall-time difference is the host's: its cost per step (a larger batch pays it for fewer steps) or drift."""
    busy = [(results[row.spec.key].kernels.busy_pct, row.id) for row in (a, b)
            if results[row.spec.key].kernels.busy_pct is not None]
    if busy and (least := min(busy))[0] < HOST_BOUND_BUSY_PCT:
        return (f"host-bound: the step's wall time is mostly Python and kernel launches "
                f"(GPU busy {least[0]:.0f}% in {least[1]})")
    if not gpu_moves:
        return ("the same GPU work (GPU time within 1%): the wall-time difference is host time, per step "
                "(fewer, larger steps pay it less often) or the host's drift between runs")
    return NOT_MEASURED


def _trend_cause(a: Row, b: Row, metric: str, results: dict[str, Result]) -> str:
    """Where steps cost about the same whatever their tokens, a fixed cost per step dominates: the host's
    (Python, kernel launches), not the GPU's work. Shown by row b's steps holding far more tokens than
    row a's at little more time (longer samples), or by row a's shortest timed step costing nearly what
    its longest does (a larger batch then pays that cost once for several samples). Facts of this run;
    the seed's steps on the A100 grew with the tokens."""
    ra, rb = results[a.spec.key].timing, results[b.spec.key].timing
    if metric != "min" or not (ra.step_durations_s and rb.step_durations_s):
        return NOT_MEASURED
    (ta, sa), (tb, sb) = [(median(r.step_tokens), median(r.step_durations_s)) for r in (ra, rb)]
    if tb >= 1.2 * ta and sb / sa < HOST_BOUND_GROWTH * tb / ta:
        return (f"host-bound steps here: the median timed step takes {sa:.2f} s at {ta:.0f} tokens and "
                f"{sb:.2f} s at {tb:.0f}")
    steps = sorted(zip(ra.step_tokens, ra.step_durations_s))
    (t_short, s_short), (t_long, s_long) = steps[0], steps[-1]
    if t_short <= 0.25 * t_long and s_short >= HOST_FLOOR_SHARE * s_long:
        return (f"a per-step host cost: in {a.id} the shortest timed step ({t_short} tokens) takes {s_short:.2f} s, "
                f"the longest ({t_long} tokens) {s_long:.2f} s")
    return NOT_MEASURED


def _run_values(a: Row, b: Row, metric: str, results: dict[str, Result]) -> tuple[float | None, float | None]:
    return run_value(results.get(a.spec.key), metric), run_value(results.get(b.spec.key), metric)


def _moves(values: tuple[float, float]) -> bool:
    """Whether a value changes by TREND_MIN_CHANGE or more from row a to row b."""
    return abs(values[1] / values[0] - 1) >= TREND_MIN_CHANGE


def _opposite(first: tuple[float, float], second: tuple[float, float]) -> bool:
    """Whether two values go opposite ways from row a to row b, one of them by TREND_MIN_CHANGE or more."""
    return (first[1] - first[0]) * (second[1] - second[0]) < 0 and (_moves(first) or _moves(second))


def _change(before: float, after: float, metric: str) -> str:
    digits = 0 if metric == "MiB" else 2
    return f"{number(before, digits)} → {number(after, digits)} ({(after / before - 1) * 100:+.2g}%)"
