"""The seed's tables (catalog.toml) as Table and Row objects, each row expanded to a CaseSpec.

A user catalog's tables (sftbench.user_catalog) are read by the same `read_table`.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources

from sftbench.spec import CaseSpec, InvalidSpec

# Row keys that describe the seed's measurement rather than the configuration.
_SEED_KEYS = ("seed_minutes", "seed_memory_mib", "seed_trainable", "seed_outcome")
_TOLERANCE_KEYS = ("gpu_time_tolerance_pct", "time_tolerance_pct", "memory_tolerance_pct")
ROW_FIELDS = ("id", "model_type", "sft_type", "quantization", "max_length", "batch_size", "gradient_checkpointing",
              "use_flash_attn", "attention", "lora_rank", "lora_targets", "samples", *_SEED_KEYS, *_TOLERANCE_KEYS)
USER_TEST = "test_user_rows"  # the test function holding the rows of user catalogs (tests/benchmarks)


class CatalogError(ValueError):
    """A table or row that cannot be read: one line naming the table, the row and the field."""


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
    test: str | None = None  # the test function holding the row; None (rows made by hand): its seed table's

    @property
    def node_id(self) -> str:
        return f"{self.test or table(self.table).test}[{self.id}]"


@dataclass(frozen=True)
class Table:
    name: str
    title: str
    test: str  # the test function that holds the table's rows
    columns: tuple[str, ...]
    device: str
    rows: tuple[Row, ...]


@cache
def _seed_catalog() -> dict:
    return tomllib.loads(resources.files("sftbench").joinpath("catalog.toml").read_text(encoding="utf-8"))


@cache
def tables() -> tuple[Table, ...]:
    return tuple(read_table(entry, seed_defaults()) for entry in _seed_catalog()["tables"])


def seed_defaults() -> dict:
    """The seed's [defaults]: what a row does not state (a user catalog's [defaults] go over them)."""
    return dict(_seed_catalog()["defaults"])


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


def rows_by_id(ids: list[str], tables: tuple[Table, ...] = ()) -> list[Row]:
    """The rows of these pytest ids, among the seed's and these tables' (a user catalog's), in order; one error
    naming every id they do not have."""
    rows = {row.node_id: row for row in [*all_rows(), *(row for t in tables for row in t.rows)]}
    unknown = [row_id for row_id in ids if row_id not in rows]
    if unknown:
        raise UnknownRow(f"no catalog row {', '.join(map(repr, unknown))}; ids look like "
                         f"{all_rows()[0].node_id!r} (see pytest tests/benchmarks --collect-only -q)")
    return [rows[row_id] for row_id in ids]


def rows_of(spec: CaseSpec) -> list[Row]:
    """Every row of a configuration (the qwen-7b-chat LoRA default has one in six tables)."""
    return [row for row in all_rows() if row.spec == spec]


def read_table(entry: dict, defaults: dict, user_models: dict[str, dict] | None = None) -> Table:
    """A table of catalog.toml; with `user_models`, of a user catalog: its rows are cases of USER_TEST with the ids
    `<table>-<row id>`, and a row of one of these models gets its CaseSpec fields (sftbench.user_catalog)."""
    name = entry["name"]
    device = entry.get("device", "cuda")
    test = entry["test"] if user_models is None else USER_TEST
    rows = tuple(_row(name, test, raw, defaults, device, user_models) for raw in entry["rows"])
    ids = [raw["id"] for raw in entry["rows"]]
    repeated = next((row_id for row_id in ids if ids.count(row_id) > 1), None)
    if repeated is not None:
        raise CatalogError(f"table {name!r} repeats the row id {repeated!r}")
    return Table(name, entry.get("title", name), test, tuple(entry.get("columns", ("model_type",))), device, rows)


def _row(table_name: str, test: str, raw: dict, defaults: dict, device: str,
         user_models: dict[str, dict] | None) -> Row:
    fields = {**defaults, **raw}
    try:
        unknown = [key for key in fields if key not in ROW_FIELDS]
        if unknown:
            raise InvalidSpec(f"unknown field {unknown[0]!r}; a row has {', '.join(ROW_FIELDS)}")
        row_id, model_type = fields.pop("id", None), fields.get("model_type")
        for key, value in (("id", row_id), ("model_type", model_type)):
            if not isinstance(value, str) or not value:
                raise InvalidSpec(f"{key} must be a name, got {value!r}")
        seed = {key: fields.pop(key) for key in _SEED_KEYS if key in fields}
        tolerances = {key: fields.pop(key) for key in _TOLERANCE_KEYS if key in fields}
        _check_measures({**seed, **tolerances})
        # The seed's use_flash_attn: true is flash-attn's kernel, false is the eager attention it fell back to.
        use_flash = fields.pop("use_flash_attn")
        if type(use_flash) is not bool:
            raise InvalidSpec(f"use_flash_attn must be true or false, got {use_flash!r}")
        fields.setdefault("attention", "flash_attention_2" if use_flash else "eager")
        spec = CaseSpec(device=device, **fields, **(user_models or {}).get(model_type, {}))
    except InvalidSpec as error:
        raise CatalogError(f"table {table_name!r} row {raw.get('id')!r}: {error}") from None
    pytest_id = row_id if user_models is None else f"{table_name}-{row_id}"
    return Row(table=table_name, id=pytest_id, spec=spec, test=test, **seed, **tolerances)


def _check_measures(values: dict) -> None:
    """The seed's numbers and the tolerances of a row: numbers >= 0, and an outcome of ok or oom."""
    for key, value in values.items():
        if key == "seed_outcome" and value not in ("ok", "oom"):
            raise InvalidSpec(f"seed_outcome must be 'ok' or 'oom', got {value!r}")
        if key != "seed_outcome" and (type(value) not in (int, float) or value < 0):
            raise InvalidSpec(f"{key} must be a number >= 0, got {value!r}")
