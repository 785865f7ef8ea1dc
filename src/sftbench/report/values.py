"""A seed row's numbers beside this run's, as the tables, fidelity notes and plots all read them.

The seed is ms-swift's training benchmark (Dec 2023), whose tables sftbench reproduces.
A metric is "min" (minutes per 1000 samples) or "MiB" (max reserved GPU memory). A sweep is a table's
rows that differ only in its numeric column (max_length, batch_size or lora_rank), in that column's order.
"""

from __future__ import annotations

from sftbench.catalog import Row, Table
from sftbench.result import Result

SEED_GPU_MIB = 81920  # the seed's A100 80GB


def column_text(row: Row, column: str) -> str:
    """A configuration column's cell, as the seed printed it: ✔/✘ for the switches."""
    if column == "use_flash_attn":
        return "✔" if row.spec.attention == "flash_attention_2" else "✘"
    value = getattr(row.spec, column)
    return {True: "✔", False: "✘"}.get(value, str(value)) if isinstance(value, bool) else str(value)


def seed_value(row: Row, metric: str) -> float | None:
    if row.seed_outcome != "ok":
        return None
    return row.seed_minutes if metric == "min" else row.seed_memory_mib


def run_value(result: Result | None, metric: str) -> float | None:
    if result is None or result.outcome != "ok":
        return None
    return result.minutes_per_1000_samples if metric == "min" else result.memory.max_reserved_mib


def numeric_column(t: Table) -> str | None:
    """The table's numeric column (max_length, batch_size, lora_rank), if it has one."""
    for column in t.columns:
        value = getattr(t.rows[0].spec, column, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return column
    return None


def sweeps(t: Table, axis: str) -> list[list[Row]]:
    """The table's rows grouped by every column but the axis, each group sorted along the axis."""
    groups: dict[tuple[str, ...], list[Row]] = {}
    for row in t.rows:
        groups.setdefault(tuple(column_text(row, c) for c in t.columns if c != axis), []).append(row)
    return [sorted(rows, key=lambda row: getattr(row.spec, axis)) for rows in groups.values()]
