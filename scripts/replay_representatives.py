"""Replay traced runs as quick runs of fewer representatives: how many the GPU-minutes need.

    python scripts/replay_representatives.py docs/diagnostics-h200/projection-gpu-time/len*
    python scripts/replay_representatives.py RESULTS/nvidia-h100-80gb-hbm3

A `python -m sftbench projection --out` folder (with projection.json) is replayed against its reference: the result
with the most traced steps, projection.json's GPU-minutes. Any other folder of results is replayed result by result,
each against its own GPU-minutes (the batch sizes it did not trace interpolated between those it did). For each
count of representatives it prints the quick mode's projection from those steps
(sftbench.diagnostics.projection.replay_quick_gpu) against the reference, in %.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from types import SimpleNamespace

from sftbench.diagnostics.projection import replay_quick_gpu
from sftbench.storage.results import read_result

COUNTS = (4, 6, 8, 10, 12, 16)


def replayed(result, full: float) -> str:
    result = copy.deepcopy(result)
    for step in result.kernels.steps:  # references before weighted steps: each traced step stands for itself
        step.weight = step.weight if step.weight is not None else 1.0
    spec = SimpleNamespace(**result.case)
    return ", ".join(f"{n}: {100 * (replay_quick_gpu(result, spec, n) / full - 1):+.2f}%" for n in COUNTS)


def main(folders: list[str]) -> None:
    for folder in map(Path, folders):
        results = [read_result(p) for p in sorted(folder.glob("*.json")) if p.name != "projection.json"]
        traced = [r for r in results if r.kernels and r.kernels.gpu_minutes_per_1000_samples]
        if (folder / "projection.json").exists():
            entry = json.loads((folder / "projection.json").read_text())[0]
            reference = max(traced, key=lambda r: len(r.kernels.steps))
            print(f"{entry['row']} ({entry['reference']}, {entry['full_gpu_min']:.4f} GPU-min/1000): "
                  + replayed(reference, entry["full_gpu_min"]))
            continue
        for result in traced:
            print(f"{result.key} ({len(result.kernels.steps)} traced steps, "
                  f"{result.kernels.gpu_minutes_per_1000_samples:.4f} GPU-min/1000): "
                  + replayed(result, result.kernels.gpu_minutes_per_1000_samples))


if __name__ == "__main__":
    main(sys.argv[1:])
