"""Fidelity notes: where this run differs from the seed (memory beyond 10%, outcomes, within-table trends
that go the other way), each with a cause where this run's own numbers or a memory diagnostic show one.

The seed is ms-swift's training benchmark (Dec 2023), whose tables sftbench reproduces.
"""

from __future__ import annotations

from statistics import median

from sftbench.catalog import Row, seed_tables
from sftbench.report.tables import number, ratio
from sftbench.report.values import SEED_GPU_MIB, numeric_column, run_value, seed_value, sweeps
from sftbench.result import Result

MEMORY_NOTE_RATIO = 0.10  # a bf16 row whose reserved memory is off the seed's by more than this gets a note
TREND_MIN_CHANGE = 0.01  # neighbouring rows that change less than this in both runs show no trend to reverse
NOT_MEASURED = "not yet measured"
# A step with more tokens whose time grows by less than this fraction of the token growth is host-bound.
HOST_BOUND_GROWTH = 0.8
# A step of a quarter of the tokens or fewer that still takes this share of the longest step's time is host-bound.
HOST_FLOOR_SHARE = 0.6


def fidelity_notes(results: dict[str, Result], diagnostics: dict[str, dict]) -> list[str]:
    """The Markdown lines of the notes: one table per kind of difference, or "None."."""
    lines = ["## Fidelity notes", "",
             "What differs from the seed. A cause is given where this run's own numbers or a memory diagnostic "
             f"of its configuration show it; otherwise it is {NOT_MEASURED}.", ""]
    for title, head, rows in (
        (f"Memory more than {MEMORY_NOTE_RATIO:.0%} off the seed (bf16 rows)",
         ["rows", "seed MiB", "MiB", "ratio"], _memory_notes(results, diagnostics)),
        ("Outcome differs from the seed", ["rows", "seed", "this run"], _outcome_notes(results)),
        ("Within-table trend goes the other way", ["table", "rows", "metric", "seed", "this run"],
         _trend_notes(results)),
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
            f"{peak['allocated_before_mib']} MiB held before it: {largest} (scripts/step_profile.py --memory)")


def _outcome_notes(results: dict[str, Result]) -> list[list[str]]:
    notes = []
    for (key, _, seed_outcome), rows in _by_configuration(results).items():
        result = results[key]
        if result.outcome != seed_outcome:
            fits = f", {number(result.memory.max_reserved_mib, 0)} MiB" if result.outcome == "ok" else ""
            notes.append([_node_ids(rows), seed_outcome.upper(), result.outcome.upper() + fits, _outcome_cause(result)])
    return notes


def _outcome_cause(result: Result) -> str:
    """A seed OOM that fits here because this card is larger: its peak is more than the seed's card holds."""
    peak, card = result.memory.max_reserved_mib, result.machine.get("gpu_memory_mib")
    if result.outcome == "ok" and peak and card and SEED_GPU_MIB < peak < card:
        return f"needs more than the seed's 80 GB ({SEED_GPU_MIB} MiB); this GPU has {card} MiB"
    return NOT_MEASURED


def _trend_notes(results: dict[str, Result]) -> list[list[str]]:
    """Neighbouring rows along a table's numeric column where the seed's order and this run's disagree."""
    notes = []
    for t in seed_tables():
        axis = numeric_column(t)
        for sweep in sweeps(t, axis) if axis else []:
            for a, b in zip(sweep, sweep[1:]):
                notes += [[t.title, f"{a.id} → {b.id}", metric, *changes, _trend_cause(a, b, metric, results)]
                          for metric in ("min", "MiB") if (changes := _reversal(a, b, metric, results))]
    return notes


def _trend_cause(a: Row, b: Row, metric: str, results: dict[str, Result]) -> str:
    """Where steps cost about the same whatever their tokens, a fixed cost per step dominates: the host's
    (Python, kernel launches), not the GPU's work. Shown by row b's steps holding far more tokens than
    row a's at little more time (longer samples), or by row a's shortest timed step costing nearly what
    its longest does (a larger batch then pays that cost once for several samples). Facts of this run;
    the seed's steps on the A100 grew with the tokens."""
    ra, rb = results[a.spec.key], results[b.spec.key]
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


def _reversal(a: Row, b: Row, metric: str, results: dict[str, Result]) -> list[str] | None:
    """The seed's change from row a to row b and this run's, where they go opposite ways."""
    seed = (seed_value(a, metric), seed_value(b, metric))
    now = (run_value(results.get(a.spec.key), metric), run_value(results.get(b.spec.key), metric))
    if None in seed + now or (seed[1] - seed[0]) * (now[1] - now[0]) >= 0:
        return None
    if max(abs(seed[1] / seed[0] - 1), abs(now[1] / now[0] - 1)) < TREND_MIN_CHANGE:
        return None
    return [_change(*seed, metric), _change(*now, metric)]


def _change(before: float, after: float, metric: str) -> str:
    digits = 2 if metric == "min" else 0
    return f"{number(before, digits)} → {number(after, digits)} ({(after / before - 1) * 100:+.2g}%)"
