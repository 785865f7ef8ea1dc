"""Reading what the report shows: results or baselines folders, and memory-diagnostics files."""

from __future__ import annotations

import json
from pathlib import Path

from sftbench.result import Result


def load_results(folder: Path) -> dict[str, Result]:
    """Results by configuration key, from a results/<gpu>/ folder or a baselines/<gpu>/ folder."""
    results = {}
    for path in sorted(Path(folder).glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        result = Result.from_dict(data["result"] if "result" in data else data)
        results[result.key] = result
    return results


def load_diagnostics(folder: Path) -> dict[str, dict]:
    """Memory diagnostics by configuration key: the JSON files of `scripts/step_profile.py --memory`."""
    diagnostics = {}
    for path in sorted(Path(folder).glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        if "memory_at_peak" in data:
            diagnostics[data["key"]] = data["memory_at_peak"]
    return diagnostics
