"""The seed's tables (catalog.toml) as Table and Row objects, each row expanded to a CaseSpec."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources

from sftbench.spec import CaseSpec

# Row keys that describe the seed's measurement rather than the configuration.
_SEED_KEYS = ("seed_minutes", "seed_memory_mib", "seed_trainable", "seed_outcome")
_TOLERANCE_KEYS = ("gpu_time_tolerance_pct", "time_tolerance_pct", "memory_tolerance_pct")


@dataclass(frozen=True)
class Row:
    table: str  # table name, e.g. "lora_max_length"
    id: str  # the pytest id, e.g. "qwen-7b-chat-4096"
    spec: CaseSpec
    seed_minutes: float | None = None
    seed_memory_mib: int | None = None
    seed_trainable: int | None = None
    seed_outcome: str = "ok"  # "ok" or "oom"
    gpu_time_tolerance_pct: float | None = None  # per-case overrides of the run's tolerances
    time_tolerance_pct: float | None = None
    memory_tolerance_pct: float | None = None

    @property
    def node_id(self) -> str:
        return f"{table(self.table).test}[{self.id}]"


@dataclass(frozen=True)
class Table:
    name: str
    title: str
    test: str  # the test function that holds the table's rows
    columns: tuple[str, ...]
    device: str
    rows: tuple[Row, ...]


@cache
def tables() -> tuple[Table, ...]:
    data = tomllib.loads(resources.files("sftbench").joinpath("catalog.toml").read_text(encoding="utf-8"))
    defaults = data["defaults"]
    return tuple(_table(entry, defaults) for entry in data["tables"])


def table(name: str) -> Table:
    for t in tables():
        if t.name == name:
            return t
    raise KeyError(f"no table {name!r} in the catalog; tables: {', '.join(t.name for t in tables())}")


def seed_tables() -> tuple[Table, ...]:
    """The tables of the seed document (all but the CPU smoke table)."""
    return tuple(t for t in tables() if t.device == "cuda")


def all_rows() -> list[Row]:
    return [row for t in tables() for row in t.rows]


class UnknownRow(ValueError):
    pass


def rows_by_id(ids: list[str]) -> list[Row]:
    """The rows of these pytest ids, in order; one error naming every id the catalog does not have."""
    rows = {row.node_id: row for row in all_rows()}
    unknown = [row_id for row_id in ids if row_id not in rows]
    if unknown:
        raise UnknownRow(f"no catalog row {', '.join(map(repr, unknown))}; ids look like "
                         f"{all_rows()[0].node_id!r} (see pytest tests/benchmarks --collect-only -q)")
    return [rows[row_id] for row_id in ids]


def rows_of(spec: CaseSpec) -> list[Row]:
    """Every row of a configuration (the qwen-7b-chat LoRA default has one in six tables)."""
    return [row for row in all_rows() if row.spec == spec]


def _table(entry: dict, defaults: dict) -> Table:
    device = entry.get("device", "cuda")
    rows = tuple(_row(entry["name"], raw, defaults, device) for raw in entry["rows"])
    ids = [row.id for row in rows]
    if len(set(ids)) != len(ids):
        raise ValueError(f"catalog table {entry['name']!r} repeats a row id: {ids}")
    return Table(entry["name"], entry["title"], entry["test"], tuple(entry["columns"]), device, rows)


def _row(table_name: str, raw: dict, defaults: dict, device: str) -> Row:
    fields = {**defaults, **raw}
    row_id = fields.pop("id")
    seed = {key: fields.pop(key) for key in _SEED_KEYS if key in fields}
    tolerances = {key: fields.pop(key) for key in _TOLERANCE_KEYS if key in fields}
    # The seed's use_flash_attn: true is flash-attn's kernel, false is the eager attention it fell back to.
    use_flash = fields.pop("use_flash_attn")
    fields.setdefault("attention", "flash_attention_2" if use_flash else "eager")
    spec = CaseSpec(device=device, **fields)
    return Row(table=table_name, id=row_id, spec=spec, **seed, **tolerances)
