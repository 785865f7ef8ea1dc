"""Self-test knobs: deliberate extra GPU work, host time and memory in every micro-step of a case, and the
Injector that applies them inside the case's trainer.

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
- SFTBENCH_INJECT_MEMORY_IN=TARGET:X (activations, optimizer or frozen): X% of the warm-up's allocated peak
  added to one memory category only (sftbench.memory), at every peak: a temporary allocated at the start of
  each micro-step and held through the optimizer step after it; an extra optimizer state per trainable
  parameter, shared out by size; or an extra frozen parameter on the model. Not with SFTBENCH_INJECT_MEMORY_PCT.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

GPU_PCT, HOST_MS, MEMORY_PCT = "SFTBENCH_INJECT_GPU_PCT", "SFTBENCH_INJECT_HOST_MS", "SFTBENCH_INJECT_MEMORY_PCT"
KERNELS, MEMORY_IN = "SFTBENCH_INJECT_KERNELS", "SFTBENCH_INJECT_MEMORY_IN"
KNOBS = (GPU_PCT, HOST_MS, MEMORY_PCT, KERNELS, MEMORY_IN)
# SFTBENCH_INJECT_KERNELS's targets: the torch operators after which it spins, and the family each one's kernels
# are in (kernel_families.toml).
KERNEL_TARGETS = {
    "attention": {"flash_attn::_flash_attn_forward": "attention forward",
                  "flash_attn::_flash_attn_varlen_forward": "attention forward",
                  "flash_attn::_flash_attn_backward": "attention backward",
                  "flash_attn::_flash_attn_varlen_backward": "attention backward"},
    "gemm": {name: "GEMM" for name in ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")},
}
# SFTBENCH_INJECT_MEMORY_IN's targets: the category of the memory at the peak each one grows (sftbench.memory).
MEMORY_TARGETS = {"activations": "activations and temporaries", "optimizer": "optimizer states",
                  "frozen": "frozen parameters"}


@dataclass(frozen=True)
class Injection:
    gpu_pct: float = 0.0
    host_ms: float = 0.0
    memory_pct: float = 0.0
    kernels: str = ""  # a KERNEL_TARGETS key, or "" where no family is slowed
    kernels_pct: float = 0.0
    memory_in: str = ""  # a MEMORY_TARGETS key, or "" where no category grows
    memory_in_pct: float = 0.0

    @classmethod
    def from_environ(cls, environ=os.environ) -> Injection:
        values = {}
        for field, name in (("gpu_pct", GPU_PCT), ("host_ms", HOST_MS), ("memory_pct", MEMORY_PCT)):
            values[field] = _percentage(name, environ.get(name, "").strip())
        values["kernels"], values["kernels_pct"] = _target(KERNELS, environ.get(KERNELS, ""), KERNEL_TARGETS)
        values["memory_in"], values["memory_in_pct"] = _target(MEMORY_IN, environ.get(MEMORY_IN, ""), MEMORY_TARGETS)
        if values["kernels"] and values["gpu_pct"]:
            raise ValueError(f"{KERNELS} and {GPU_PCT} cannot be set together: both are GPU spins")
        if values["memory_in"] and values["memory_pct"]:
            raise ValueError(f"{MEMORY_IN} and {MEMORY_PCT} cannot be set together: both add memory")
        return cls(**values)


def _target(name: str, text: str, targets: dict) -> tuple[str, float]:
    """A TARGET:X knob's (target, percentage); ("", 0.0) where it is not set."""
    text = text.strip()
    if not text:
        return "", 0.0
    target, _, pct = text.partition(":")
    example = f"{next(iter(targets))}:3"
    if target not in targets:
        raise ValueError(f"{name}={text!r}: the target is one of {', '.join(targets)} (e.g. {example})")
    try:
        value = float(pct)
    except ValueError:
        raise ValueError(f"{name}={text!r}: the percentage is not a number (e.g. {example})") from None
    if not value >= 0:
        raise ValueError(f"{name}={text!r}: the percentage must be >= 0")
    return target, value


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


CALIBRATION_CYCLES = 20_000_000  # GPU clock cycles of the spin that sizes the GPU spins


class Injector:
    """The knobs applied in a trainer's micro-steps: host sleep before each, a GPU spin after each
    (SFTBENCH_INJECT_GPU_PCT), a spin after each traced operator of a family's target (SFTBENCH_INJECT_KERNELS,
    through the kernel timer's `after_operator`), and the memory ballast held from `prepare` on."""

    def __init__(self, injection: Injection, kernel_timer, device):
        if (injection.gpu_pct or injection.kernels) and kernel_timer is None:
            raise RuntimeError(f"{GPU_PCT} and {KERNELS} need the GPU kernel clock (CUDA and cupti-python)")
        self.injection, self.kernel_timer, self.device = injection, kernel_timer, device
        self._spin_cycles = None  # tokens -> GPU cycles of the spin after each micro-step (SFTBENCH_INJECT_GPU_PCT)
        self._tokens = 0  # of the micro-step running: SFTBENCH_INJECT_KERNELS sizes its spins by them
        self._ballast = None  # the allocation of SFTBENCH_INJECT_MEMORY_PCT, or SFTBENCH_INJECT_MEMORY_IN=frozen's
        self._temporary_bytes = 0  # SFTBENCH_INJECT_MEMORY_IN=activations: held from a micro-step's start ...
        self._temporary = None  # ... through the optimizer step after it

    def before_micro_step(self, tokens: int) -> None:
        if self.injection.host_ms:
            time.sleep(self.injection.host_ms / 1000)
        if self._temporary_bytes and self._temporary is None:
            import torch

            self._temporary = torch.empty(self._temporary_bytes, dtype=torch.uint8, device=self.device)
        self._tokens = tokens

    def after_optimizer_step(self) -> None:
        self._temporary = None

    def after_micro_step(self, tokens: int) -> None:
        if self._spin_cycles is not None:
            import torch

            torch.cuda._sleep(self._spin_cycles(tokens))

    def prepare(self, micro_step, shortest, longest, model=None, optimizer=None) -> None:
        """Once the case is warm: allocate the ballast or the memory of a category, and size the GPU spins from
        the kernel time of the shortest and the longest batch (`micro_step(batch)`) and of a calibration spin,
        traced and then discarded."""
        import torch

        if self.injection.memory_pct and self.device.type == "cuda":
            size = int(self.injection.memory_pct / 100 * torch.cuda.max_memory_reserved(self.device))
            self._ballast = torch.empty(size, dtype=torch.uint8, device=self.device)
        if self.injection.memory_in and self.device.type == "cuda":
            self._grow(int(self.injection.memory_in_pct / 100 * torch.cuda.max_memory_allocated(self.device)),
                       model, optimizer)
        if not (self.injection.gpu_pct or self.injection.kernels):
            return
        timer = self.kernel_timer
        for batch in (shortest, longest):
            with timer.step(batch.tokens):
                micro_step(batch)
        with timer.step(0):
            torch.cuda._sleep(CALIBRATION_CYCLES)
        *calibration, spin = timer.collect(keep=False)
        cycles_per_s = CALIBRATION_CYCLES / spin.seconds
        if self.injection.gpu_pct:
            (short, long), tokens = (s.seconds for s in calibration), [s.tokens for s in calibration]
            per_token = (long - short) / max(tokens[1] - tokens[0], 1)
            share = self.injection.gpu_pct / 100 * cycles_per_s
            self._spin_cycles = lambda n: int(share * (short + per_token * (n - tokens[0])))
        else:
            timer.after_operator = kernel_spins(calibration, self.injection, cycles_per_s, lambda: self._tokens)

    def _grow(self, size: int, model, optimizer) -> None:
        """SFTBENCH_INJECT_MEMORY_IN: `size` bytes more in its target's category (sftbench.memory sorts them by
        address: a frozen parameter is found among the model's parameters, a state among the optimizer's)."""
        import torch

        if self.injection.memory_in == "activations":
            self._temporary_bytes = size
        elif self.injection.memory_in == "frozen":
            self._ballast = torch.nn.Parameter(torch.zeros(size, dtype=torch.uint8, device=self.device),
                                               requires_grad=False)
            model.register_parameter("sftbench_injected_frozen", self._ballast)
        else:
            held = [p for group in optimizer.param_groups for p in group["params"] if p in optimizer.state]
            total = sum(p.numel() for p in held)
            for p in held:
                optimizer.state[p]["sftbench_injected"] = torch.zeros(
                    max(size * p.numel() // total, 1), dtype=torch.uint8, device=self.device)


def kernel_spins(calibration, injection: Injection, cycles_per_s: float, tokens_now):
    """SFTBENCH_INJECT_KERNELS's hook after each traced operator: for an operator of the target, a GPU spin of
    the knob's share of its family's seconds per such operator, linear in the micro-step's tokens between the
    two calibration steps (TracedSteps of the shortest and the longest batch, traced without spins)."""
    import torch

    targets = KERNEL_TARGETS[injection.kernels]
    points = {}  # family -> [(tokens, seconds per target operator)] at the two calibration steps
    for step in calibration:
        for family in set(targets.values()):
            calls = sum(n for name, n in step.operators.items() if targets.get(name) == family)
            points.setdefault(family, []).append((step.tokens, step.families.get(family, 0.0) / max(calls, 1)))

    def spin(name: str) -> None:
        family = targets.get(name)
        if family is not None:
            (x0, y0), (x1, y1) = points[family]
            per_call = y0 + (y1 - y0) * (tokens_now() - x0) / max(x1 - x0, 1)
            torch.cuda._sleep(max(int(injection.kernels_pct / 100 * per_call * cycles_per_s), 1))
    return spin
