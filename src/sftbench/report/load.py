"""Reading what the report shows: results or baselines folders (memory diagnostics: sftbench.diagnostics)."""

from __future__ import annotations

import json
from pathlib import Path

from sftbench.result import Result


def load_results(folder: Path) -> dict[str, Result]:
    """Results by configuration key, from a results/<gpu>/ folder or a baselines/<gpu>/ folder; ValueError
    naming the first file that is not a result."""
    results, problems = scan_results(folder)
    if problems:
        raise ValueError(problems[0])
    return results


def scan_results(folder: Path) -> tuple[dict[str, Result], list[str]]:
    """(results by configuration key, one line per JSON file that is not a result: its path and why)."""
    results, problems = {}, []
    for path in sorted(Path(folder).glob("*.json")):
        try:
            result = read_result(path)
        except (OSError, ValueError, KeyError, TypeError) as error:
            problems.append(f"{path} is not a result ({type(error).__name__}: {error})")
            continue
        results[result.key] = result
    return results, problems


def read_result(path: Path) -> Result:
    """A result file, or a baseline file's result; ValueError, KeyError or TypeError where it is neither."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError("a JSON object was expected")
    return Result.from_dict(data["result"] if "result" in data else data)
