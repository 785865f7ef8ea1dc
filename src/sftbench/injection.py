"""Self-test knobs: deliberate extra GPU work, host time and memory in every micro-step of a case.

They exist to prove that the suite flags what it should (`python -m sftbench selftest`), never to
measure anything: the variables are recorded in each result's settings, a comparison names them as
settings that differ, and `--sftbench-update-baselines` refuses a run made with any of them.

- SFTBENCH_INJECT_GPU_PCT=X: after each micro-step, a GPU spin (torch.cuda._sleep) of X% of that
  step's kernel time, estimated from the warm-up's traced steps (linear in tokens).
- SFTBENCH_INJECT_HOST_MS=X: X ms of host sleep at the start of each micro-step, the GPU idle.
- SFTBENCH_INJECT_MEMORY_PCT=X: an allocation of X% of the warm-up's reserved peak, held from then on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

GPU_PCT, HOST_MS, MEMORY_PCT = "SFTBENCH_INJECT_GPU_PCT", "SFTBENCH_INJECT_HOST_MS", "SFTBENCH_INJECT_MEMORY_PCT"
KNOBS = (GPU_PCT, HOST_MS, MEMORY_PCT)


@dataclass(frozen=True)
class Injection:
    gpu_pct: float = 0.0
    host_ms: float = 0.0
    memory_pct: float = 0.0

    @classmethod
    def from_environ(cls, environ=os.environ) -> Injection:
        values = {}
        for field, name in (("gpu_pct", GPU_PCT), ("host_ms", HOST_MS), ("memory_pct", MEMORY_PCT)):
            text = environ.get(name, "").strip()
            try:
                values[field] = float(text) if text else 0.0
            except ValueError:
                raise ValueError(f"{name}={text!r} is not a number") from None
            if not values[field] >= 0:
                raise ValueError(f"{name}={text!r} must be >= 0")
        return cls(**values)


def injected(settings: dict[str, str]) -> list[str]:
    """The knobs set in a result's recorded settings (environment.settings()): any value but empty or zero
    ("0.0" injects nothing; a value that is no number counts as set, since nothing could measure it)."""
    return [name for name in KNOBS if _set(settings.get(name, ""))]


def _set(text: str) -> bool:
    try:
        return float(text.strip() or 0) != 0
    except ValueError:
        return True
