"""Replay a projection reference as quick runs of fewer representatives: how many the GPU-minutes need.

    python scripts/replay_representatives.py docs/diagnostics-h200/projection-gpu-time/len*

Each folder is a `python -m sftbench projection --out` folder: projection.json names the row and the reference's
GPU-minutes; the result with the most traced steps is the reference. For each count of representatives it prints
the quick mode's projection from the reference's own steps (sftbench.diagnostics.projection.replay_quick_gpu)
against the reference, in %.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

from sftbench.catalog import rows_by_id
from sftbench.diagnostics.projection import replay_quick_gpu
from sftbench.storage.results import read_result

COUNTS = (4, 6, 8, 10, 12, 16)


def reference(folder: Path):
    results = [read_result(p) for p in folder.glob("*.json") if p.name != "projection.json"]
    result = copy.deepcopy(max((r for r in results if r.kernels), key=lambda r: len(r.kernels.steps)))
    for step in result.kernels.steps:  # references before weighted steps: each traced step stands for itself
        step.weight = step.weight if step.weight is not None else 1.0
    return result


def main(folders: list[str]) -> None:
    for folder in map(Path, folders):
        entry = json.loads((folder / "projection.json").read_text())[0]
        spec, full = rows_by_id([entry["row"]])[0].spec, entry["full_gpu_min"]
        result = reference(folder)
        changes = [f"{n}: {100 * (replay_quick_gpu(result, spec, n) / full - 1):+.2f}%" for n in COUNTS]
        print(f"{entry['row']} ({entry['reference']}, {full:.4f} GPU-min/1000): " + ", ".join(changes))


if __name__ == "__main__":
    main(sys.argv[1:])
