"""A seed row's numbers beside this run's, as the tables, fidelity notes and plots all read them.

The seed is ms-swift's training benchmark (Dec 2023), whose tables sftbench reproduces.
A metric is "min" (wall minutes per 1000 samples), "GPU min" (GPU kernel minutes per 1000 samples; this run
only, the seed has none) or "MiB" (max reserved GPU memory). A sweep is a table's rows that differ only in its
numeric column (max_length, batch_size or lora_rank), in that column's order.
"""

from __future__ import annotations

from collections.abc import Iterator

from sftbench.catalog import Row, Table, seed_tables
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
    return {"min": row.seed_minutes, "MiB": row.seed_memory_mib}.get(metric)


def run_value(result: Result | None, metric: str) -> float | None:
    if result is None or result.outcome != "ok":
        return None
    return {"min": result.timing.minutes_per_1000_samples, "GPU min": result.kernels.gpu_minutes_per_1000_samples,
            "MiB": result.memory.max_reserved_mib}[metric]


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


def neighbours() -> Iterator[tuple[Table, Row, Row]]:
    """Every pair of neighbouring rows along a seed table's sweeps, with their table."""
    for t in seed_tables():
        axis = numeric_column(t)
        for sweep in sweeps(t, axis) if axis else []:
            for a, b in zip(sweep, sweep[1:]):
                yield t, a, b
