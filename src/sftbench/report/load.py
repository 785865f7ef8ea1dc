"""Reading what the report shows: results or baselines folders (memory diagnostics: sftbench.diagnostics)."""

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
