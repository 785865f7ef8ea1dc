"""The seed's tables in Markdown, row for row: the seed's minutes and MiB beside this run's, with ratios,
and this run's GPU kernel minutes and GPU busy share beside its wall minutes (empty where it has none).

The seed is ms-swift's training benchmark (Dec 2023), whose tables sftbench reproduces.
"""

from __future__ import annotations

from sftbench.catalog import Row, Table, seed_tables
from sftbench.report.mfu import mfu
from sftbench.report.values import column_text
from sftbench.result import Result


def stack(results: dict[str, Result]) -> str:
    """This run's GPU and package versions, from its first result."""
    for r in results.values():
        v = r.versions
        return (f"{r.machine.get('gpu')}, torch {v.get('torch')}, transformers {v.get('transformers')}, "
                f"peft {v.get('peft')}, flash-attn {v.get('flash-attn')}")
    return "no results"


def coverage(results: dict[str, Result], user_tables: tuple[Table, ...] = ()) -> str:
    """How many of the seed's rows this run has results for, and in which modes; and of the user tables' rows."""
    rows = [row for t in seed_tables() for row in t.rows]
    user_rows = [row for t in user_tables for row in t.rows]
    seed_keys = {row.spec.key for row in rows} & set(results)
    shown = seed_keys | ({row.spec.key for row in user_rows} & set(results))
    modes = ", ".join(sorted({results[key].mode for key in shown})) or "none"
    line = (f"This run: {len(seed_keys)} configurations, {sum(row.spec.key in results for row in rows)} of the "
            f"{len(rows)} seed rows (mode: {modes}).")
    if user_rows:
        line += (f" Tables of your own: {len(shown - seed_keys)} configurations, "
                 f"{sum(row.spec.key in results for row in user_rows)} of their {len(user_rows)} rows.")
    if len(results) > len(shown):
        line += f" {len(results) - len(shown)} other configurations are in none of these tables and not shown."
    return line


def table(t: Table, results: dict[str, Result], beside: dict[str, Result] | None = None) -> list[str]:
    """The Markdown lines of one seed table: its columns, then seed | this run | ratio for minutes (with this
    run's GPU minutes and GPU busy) and for MiB; with `beside` (another GPU's results), its minutes, GPU minutes
    and MiB after this run's."""
    head = [*t.columns, "seed min", "min", "ratio", "GPU min", "GPU busy", "seed MiB", "MiB", "ratio", "tokens/s",
            "MFU", "attention", "mode"]
    trainable = any(row.seed_trainable for row in t.rows)  # the seed printed it for the LoRA rank table
    if trainable:
        head += ["seed trainable", "trainable"]
    if beside is not None:
        gpu = next((r.machine.get("gpu") for r in beside.values()), None) or "beside"
        head += [f"{gpu} min", f"{gpu} GPU min", f"{gpu} MiB"]
    lines = [f"## {t.title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in t.rows:
        result = results.get(row.spec.key)
        cells = _cells(row, t, result)
        if trainable:
            cells += [_millions(row.seed_trainable), _millions(result.trainable_params if result else None)]
        if beside is not None:
            cells += _beside_cells(beside.get(row.spec.key))
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def _beside_cells(result: Result | None) -> list[str]:
    if result is None:
        return ["not run", "", ""]
    if result.outcome != "ok":
        return [result.outcome.upper(), "", result.outcome.upper()]
    return [number(result.timing.minutes_per_1000_samples), number(result.kernels.gpu_minutes_per_1000_samples),
            number(result.memory.max_reserved_mib, 0)]


def number(value: float | None, digits: int = 2) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def ratio(now: float | None, seed: float | None) -> str:
    return "" if now is None or not seed else f"{now / seed:.2f}"


def _millions(count: int | None) -> str:
    return "" if count is None else f"{count / 1e6:.2f}M"


def _cells(row: Row, t: Table, result: Result | None) -> list[str]:
    config = [column_text(row, column) for column in t.columns]
    seed_min = "OOM" if row.seed_outcome == "oom" else number(row.seed_minutes)
    seed_mib = "OOM" if row.seed_outcome == "oom" else number(row.seed_memory_mib, 0)
    if result is None:
        return [*config, seed_min, "not run", "", "", "", seed_mib, "not run", "", "", "", "", ""]
    if result.outcome != "ok":
        outcome = result.outcome.upper()
        return [*config, seed_min, outcome, "", "", "", seed_mib, outcome, "", "", "", result.attention or "",
                result.mode]
    minutes, mib, utilization = result.timing.minutes_per_1000_samples, result.memory.max_reserved_mib, mfu(result)
    busy = "" if result.kernels.busy_pct is None else f"{result.kernels.busy_pct:.0f}%"
    return [*config, seed_min, number(minutes), ratio(minutes, row.seed_minutes),
            number(result.kernels.gpu_minutes_per_1000_samples), busy, seed_mib, number(mib, 0),
            ratio(mib, row.seed_memory_mib), number(result.timing.tokens_per_s, 0),
            "" if utilization is None else f"{utilization:.1%}", result.attention or "", result.mode]
