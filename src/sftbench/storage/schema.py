"""One schema policy for every file sftbench writes: results, baselines, run records, self-test summaries.

A file of schema 2 is a JSON object {"schema": 2, "kind": KIND, ...}, KIND one of KINDS. Reading one checks every
field's type once, here (pydantic, strict: no string for a number, no NaN, no unknown field), and names the file
and the field of the first problem in one line. Files of schema 1 (sftbench before 2026-12: a bare result, or a
baseline or run record with "schema": 1) are read through one explicit migration to schema 2; any other schema
is refused, naming the file.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

SCHEMA = 2
KINDS = ("result", "baseline", "run record", "self-test")


class StorageError(ValueError):
    """A file sftbench cannot read or use: one line naming the file and what is wrong with it."""


class Envelope(BaseModel):
    """A file of schema 2; each kind adds its `kind` and its body. Strict: a number is a number (no string, no NaN),
    and a field no sftbench knows is refused, in the file and in every record nested in it."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="forbid")
    schema_: Literal[2] = Field(alias="schema")


def dumps(kind: str, **body) -> str:
    """A file's text: the schema and kind first, then the body (dataclasses as their fields)."""
    data = {"schema": SCHEMA, "kind": kind, **{name: _plain(value) for name, value in body.items()}}
    return json.dumps(data, indent=1, sort_keys=True) + "\n"


def _plain(value):
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


def load(path: Path, model: type[BaseModel]) -> BaseModel:
    """The file at `path` as `model` (a file envelope of one kind), migrated from schema 1 where it is older;
    StorageError naming the file otherwise."""
    return parse(read_json(path), model, str(path))


def read_json(path: Path):
    """A file's JSON; StorageError naming the file where it cannot be read or is no JSON."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise StorageError(f"{path} cannot be read ({type(error).__name__}: {error})") from None


def parse(data, model: type[BaseModel], source: str) -> BaseModel:
    """`data` (a file's JSON) as `model`; StorageError naming `source` and the field of the first problem."""
    expected = model.model_fields["kind"].annotation.__args__[0]
    schema, kind = identify(data)
    if schema is None:
        raise StorageError(f"{source} is not an sftbench file (it names no schema, and is no result of schema 1)")
    if schema not in (1, SCHEMA):
        raise StorageError(f"{source}: schema {schema!r}: this sftbench reads schemas 1 and {SCHEMA} (a newer "
                           "sftbench wrote it, or it is not an sftbench file)")
    if kind != expected:
        raise StorageError(f"{source} is {f'a {kind}' if kind else 'of no kind sftbench writes'}, not a {expected}")
    if schema == 1:
        data = MIGRATIONS[kind](data, source)
    try:
        return model.model_validate_json(json.dumps(data), strict=True)
    except ValidationError as error:
        raise StorageError(f"{source}: {field_problem(error)}") from None


def identify(data) -> tuple[object, str | None]:
    """(schema, kind) of a file's JSON; schema-1 files are told apart by their fields."""
    if not isinstance(data, dict):
        return None, None
    if "kind" in data:
        return data.get("schema"), data["kind"] if data["kind"] in KINDS else None
    if "schema" not in data:
        if {"case", "key"} <= data.keys():
            return 1, "result"
        return (1, "self-test") if "clean_reruns" in data else (None, None)
    if data["schema"] == 1:
        return 1, "baseline" if "result" in data else "run record" if "configurations" in data else None
    return data["schema"], None


def field_problem(error: ValidationError) -> str:
    """The first problem of a validation as `field a.b[2]: what (got value)`."""
    first = error.errors()[0]
    where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in first["loc"]).lstrip(".")
    got = "" if first["type"] == "missing" else f" (got {first['input']!r:.80})"
    return f"field {where or '(the file)'}: {first['msg']}{got}"


# Schema 1 -> 2. A result nests its trackers' records; a run record nests its machine and keeps each
# verdict's label and explanation as text (they were written as text then).
TIMING = ("step_durations_s", "step_tokens", "optimizer_step_s", "epoch_micro_batches", "epoch_optimizer_steps",
          "epoch_tokens", "epoch_seconds", "minutes_per_1000_samples", "tokens_per_s", "samples_per_s",
          "wall_noise_pct")
KERNELS = {"kernel_clock": "clock", "kernel_names": "names", "kernel_clock_limits": "clock_limits",
           "optimizer_kernel_s": "optimizer_s", "gpu_epoch_seconds": "epoch_seconds",
           "gpu_minutes_per_1000_samples": "gpu_minutes_per_1000_samples",
           "gpu_minutes_by_family": "gpu_minutes_by_family", "gpu_busy_pct": "busy_pct"}
# Per traced step, schema 1 kept parallel lists: list -> TracedStep field (None: not kept).
STEPS = {"kernel_step_s": "seconds", "kernel_step_tokens": "tokens", "kernel_step_weights": "weight",
         "kernel_step_kernels": "kernels", "kernel_step_sm_mhz": "sm_mhz", "kernel_step_operators": "operators",
         "kernel_step_api_calls": "api_calls", "kernel_step_counts": None, "kernel_step_families": None}
MACHINE = ("gpu", "driver", "cuda", "allocator", "gpu_memory_mib", "host", "settings")
COMPARED = ("regression", "improvement", "pass", "no-baseline", "not-comparable")


def _result(data: dict, source: str) -> dict:
    if not isinstance(data, dict):
        return data  # validation names it
    result = dict(data)
    result["timing"] = {name: result.pop(name) for name in TIMING if name in result}
    kernels = {new: result.pop(old) for old, new in KERNELS.items() if old in result}
    lists = {old: result.pop(old) for old in STEPS if old in result}
    traced = len(lists.get("kernel_step_s") or [])
    for name, values in lists.items():
        if not isinstance(values, list) or values and len(values) != traced:
            raise StorageError(f"{source}: field {name}: {len(values) if isinstance(values, list) else values!r} "
                               f"values for {traced} traced steps")
    # The families a schema-1 result stored were made by rules of unknown version: they are classified again.
    steps = [{} for _ in range(traced)]
    for old, new in STEPS.items():
        for step, value in zip(steps, lists.get(old) or []) if new else ():
            step[new] = value
    result["kernels"] = {**kernels, "steps": steps}
    return result


def _baseline(data: dict, source: str) -> dict:
    body = {name: value for name, value in data.items() if name not in ("schema", "key")}
    return {"schema": SCHEMA, "kind": "baseline", **body, "result": _result(data.get("result"), source)}


def _run_record(data: dict, source: str) -> dict:
    record = {name: value for name, value in data.items() if name not in (*MACHINE, "schema", "configurations")}
    record["machine"] = {name: data[name] for name in MACHINE if name in data}
    record["configurations"] = [_configuration(c) if isinstance(c, dict) else c
                                for c in data.get("configurations") or []]
    return {"schema": SCHEMA, "kind": "run record", "record": record}


def _configuration(entry: dict) -> dict:
    status = entry.get("verdict")
    verdict = None if status not in COMPARED else {
        "verdict": status, "wall_judged": not entry.get("wall_across_hosts", False),
        "notes": [{"code": "recorded as text", "detail": {"label": entry.get("label", status),
                                                           "lines": entry.get("explanation", [])}}]}
    return {"key": entry.get("key"), "rows": entry.get("rows", []), "status": status, "verdict": verdict,
            "now": entry.get("now"), "baseline": entry.get("baseline"), "gpu_uuid": entry.get("gpu_uuid")}


def _self_test(data: dict, source: str) -> dict:
    return {"schema": SCHEMA, "kind": "self-test", "summary": data}


MIGRATIONS = {"result": lambda data, source: {"schema": SCHEMA, "kind": "result", "result": _result(data, source)},
              "baseline": _baseline, "run record": _run_record, "self-test": _self_test}
