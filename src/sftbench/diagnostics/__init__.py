"""Diagnostics of single rows, beside the benchmark: where a case's step time and peak memory go
(`python -m sftbench profile`), how close the quick mode's projection comes to a full epoch
(`python -m sftbench projection`), flash-attn's kernels alone (`python -m sftbench attention`) and the longest
max_length that fits a card (`python -m sftbench frontier`).

A profile is written as <out>/<configuration key>.json; `memory_at_peak` below reads the part of it
that the report's fidelity notes cite. This module imports neither torch nor the models.
"""

from __future__ import annotations

import json
from pathlib import Path


def memory_at_peak(folder: Path) -> dict[str, dict]:
    """{configuration key: the profile's "memory_at_peak"} of the profiles in `folder` that have one
    (`python -m sftbench profile ROW --memory`): batch_tokens, allocated_before_mib,
    trace_peak_above_before_mib, max_allocated_mib, max_reserved_mib and groups_mib, the largest groups
    of live tensors as [where, MiB, blocks]."""
    found = {}
    for path in sorted(Path(folder).glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        if "memory_at_peak" in data:
            found[data["key"]] = data["memory_at_peak"]
    return found
