"""The report: every seed table, row for row, with the seed's numbers beside this run's."""

from __future__ import annotations

import json
from pathlib import Path

from sftbench.catalog import Row, Table, seed_tables
from sftbench.result import Result

SEED_STACK = "A100 80GB, torch 2.1.1, flash_attn 2.3.4"


def load_results(folder: Path) -> dict[str, Result]:
    """Results by configuration key, from a results/<gpu>/ folder or a baselines/<gpu>/ folder."""
    results = {}
    for path in sorted(Path(folder).glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        result = Result.from_dict(data["result"] if "result" in data else data)
        results[result.key] = result
    return results


def markdown(results: dict[str, Result], tables: tuple[Table, ...] | None = None) -> str:
    stack = _stack(results)
    lines = [f"# sftbench results: {stack}", "",
             f"Seed: ms-swift's Benchmark.md ({SEED_STACK}); its minutes are wall time of the whole "
             "`swift sft` run (model load included), ours are the training epoch of 1000 samples "
             "(projected from representative steps unless the mode says full). Memory is "
             "`torch.cuda.max_memory_reserved()` in both. Ratio = this run / seed.", ""]
    for t in tables or seed_tables():
        lines += _table(t, results)
    return "\n".join(lines) + "\n"


def _stack(results: dict[str, Result]) -> str:
    for r in results.values():
        v = r.versions
        return (f"{r.machine.get('gpu')}, torch {v.get('torch')}, transformers {v.get('transformers')}, "
                f"peft {v.get('peft')}, flash-attn {v.get('flash-attn')}")
    return "no results"


def _table(t: Table, results: dict[str, Result]) -> list[str]:
    head = [*t.columns, "seed min", "min", "ratio", "seed MiB", "MiB", "ratio", "tokens/s", "attention", "mode"]
    lines = [f"## {t.title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in t.rows:
        lines.append("| " + " | ".join(_cells(row, t, results.get(row.spec.key))) + " |")
    return lines + [""]


def _cells(row: Row, t: Table, result: Result | None) -> list[str]:
    config = [_column(row, column) for column in t.columns]
    seed_min = "OOM" if row.seed_outcome == "oom" else _num(row.seed_minutes)
    seed_mib = "OOM" if row.seed_outcome == "oom" else _num(row.seed_memory_mib, 0)
    if result is None:
        return [*config, seed_min, "not run", "", seed_mib, "not run", "", "", "", ""]
    if result.outcome != "ok":
        outcome = result.outcome.upper()
        return [*config, seed_min, outcome, "", seed_mib, outcome, "", "", result.attention or "", result.mode]
    minutes, mib = result.minutes_per_1000_samples, result.memory.max_reserved_mib
    return [*config, seed_min, _num(minutes), _ratio(minutes, row.seed_minutes), seed_mib, _num(mib, 0),
            _ratio(mib, row.seed_memory_mib), _num(result.tokens_per_s, 0), result.attention or "", result.mode]


def _column(row: Row, column: str) -> str:
    if column == "use_flash_attn":
        return "✔" if row.spec.attention == "flash_attention_2" else "✘"
    value = getattr(row.spec, column)
    return {True: "✔", False: "✘"}.get(value, str(value)) if isinstance(value, bool) else str(value)


def _num(value: float | None, digits: int = 2) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _ratio(now: float | None, seed: float | None) -> str:
    return "" if now is None or not seed else f"{now / seed:.2f}"
