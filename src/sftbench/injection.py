"""Self-test knobs: deliberate extra GPU work, host time and memory in every micro-step of a case.

They exist to prove that the suite flags what it should (`python -m sftbench selftest`), never to
measure anything: the variables are recorded in each result's settings, a comparison names them as
settings that differ, and `--sftbench-update-baselines` refuses a run made with any of them.

- SFTBENCH_INJECT_GPU_PCT=X: after each micro-step, a GPU spin (torch.cuda._sleep) of X% of that
  step's kernel time, estimated from the warm-up's traced steps (linear in tokens).
- SFTBENCH_INJECT_HOST_MS=X: X ms of host sleep at the start of each micro-step, the GPU idle.
- SFTBENCH_INJECT_MEMORY_PCT=X: an allocation of X% of the warm-up's reserved peak, held from then on.
- SFTBENCH_INJECT_KERNELS=TARGET:X (attention or gemm): one kernel family made X% slower where GPU time is
  measured, in the traced steps. After each operator of the target (KERNEL_TARGETS) a GPU spin of X% of that
  operator's share of its family's time, estimated from the warm-up's traced steps; the spin's kernel time
  counts in the family of the kernel before it, as "self-test spin (<family>)" (sftbench.kernels), so that
  the family's time grows, its kernels and the rest of the step do not. Not with SFTBENCH_INJECT_GPU_PCT.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

GPU_PCT, HOST_MS, MEMORY_PCT = "SFTBENCH_INJECT_GPU_PCT", "SFTBENCH_INJECT_HOST_MS", "SFTBENCH_INJECT_MEMORY_PCT"
KERNELS = "SFTBENCH_INJECT_KERNELS"
KNOBS = (GPU_PCT, HOST_MS, MEMORY_PCT, KERNELS)
# SFTBENCH_INJECT_KERNELS's targets: the torch operators after which it spins, and the family each one's kernels
# are in (kernel_families.toml).
KERNEL_TARGETS = {
    "attention": {"flash_attn::_flash_attn_forward": "attention forward",
                  "flash_attn::_flash_attn_varlen_forward": "attention forward",
                  "flash_attn::_flash_attn_backward": "attention backward",
                  "flash_attn::_flash_attn_varlen_backward": "attention backward"},
    "gemm": {name: "GEMM" for name in ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")},
}


@dataclass(frozen=True)
class Injection:
    gpu_pct: float = 0.0
    host_ms: float = 0.0
    memory_pct: float = 0.0
    kernels: str = ""  # a KERNEL_TARGETS key, or "" where no family is slowed
    kernels_pct: float = 0.0

    @classmethod
    def from_environ(cls, environ=os.environ) -> Injection:
        values = {}
        for field, name in (("gpu_pct", GPU_PCT), ("host_ms", HOST_MS), ("memory_pct", MEMORY_PCT)):
            values[field] = _percentage(name, environ.get(name, "").strip())
        text = environ.get(KERNELS, "").strip()
        if text:
            target, _, pct = text.partition(":")
            if target not in KERNEL_TARGETS:
                raise ValueError(f"{KERNELS}={text!r}: the target is one of {', '.join(KERNEL_TARGETS)} (e.g. attention:10)")
            values["kernels"], values["kernels_pct"] = target, _percentage(KERNELS, pct)
            if values["gpu_pct"]:
                raise ValueError(f"{KERNELS} and {GPU_PCT} cannot be set together: both are GPU spins")
        return cls(**values)


def _percentage(name: str, text: str) -> float:
    try:
        value = float(text) if text else 0.0
    except ValueError:
        raise ValueError(f"{name}={text!r} is not a number") from None
    if not value >= 0:
        raise ValueError(f"{name}={text!r} must be >= 0")
    return value


def injected(settings: dict[str, str]) -> list[str]:
    """The knobs set in a result's recorded settings (environment.settings()): any value but empty or zero
    ("0.0" injects nothing; a value that is no number counts as set, since nothing could measure it)."""
    return [name for name in KNOBS if _set(settings.get(name, ""))]


def _set(text: str) -> bool:
    try:
        return float(text.rpartition(":")[2].strip() or 0) != 0  # SFTBENCH_INJECT_KERNELS: TARGET:X
    except ValueError:
        return True
