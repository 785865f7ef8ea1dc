"""Result: what one case measured, as a plain dataclass that round-trips through JSON."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

OUTCOMES = ("ok", "oom", "error")


def minutes_per_1000_samples(epoch_seconds: float, samples: int) -> float:
    """The seed's speed unit, from an epoch of `samples` samples."""
    return epoch_seconds / 60 * 1000 / samples


@dataclass
class MemoryPeaks:
    max_reserved_mib: float | None = None  # the seed's metric
    max_allocated_mib: float | None = None
    max_active_mib: float | None = None
    nvml_peak_mib: float | None = None  # whole device, sampled; None without nvidia-ml-py
    max_rss_mib: float | None = None  # host memory of the case's process


@dataclass
class Result:
    case: dict  # CaseSpec.to_dict()
    key: str  # CaseSpec.key
    outcome: str = "ok"  # ok | oom | error
    message: str = ""
    mode: str = "quick"  # quick: timed representative steps, projected; full: the whole epoch
    attention: str | None = None  # the kernel that actually ran (model.config._attn_implementation)
    quantization_backend: str | None = None
    # Timed micro-steps (forward + backward of one batch) and the padded tokens of each.
    step_durations_s: list[float] = field(default_factory=list)
    step_tokens: list[int] = field(default_factory=list)
    optimizer_step_s: float | None = None  # median of clip + AdamW step + zero_grad
    epoch_micro_batches: int = 0
    epoch_optimizer_steps: int = 0
    epoch_tokens: int = 0  # tokens of the whole epoch after truncation, padding not counted
    epoch_seconds: float | None = None  # projected (quick) or measured (full)
    minutes_per_1000_samples: float | None = None
    tokens_per_s: float | None = None
    samples_per_s: float | None = None
    # GPU kernel time (CUPTI): the clock ("cupti-python 13.0.1", or "unavailable: why"), the traced micro-steps'
    # summed kernel seconds, kernel counts and tokens, the optimizer step's kernel seconds, and the epoch's.
    kernel_clock: str | None = None
    kernel_step_s: list[float] = field(default_factory=list)
    kernel_step_counts: list[int] = field(default_factory=list)
    kernel_step_tokens: list[int] = field(default_factory=list)
    kernel_step_sm_mhz: list[int | None] = field(default_factory=list)  # mean SM clock (NVML) of each traced step
    # In how many traced steps NVML reported each reason that held the clock down ("power cap": 7); {} where it
    # reported none, None where it was not read.
    kernel_clock_limits: dict[str, int] | None = None
    # What the traced steps' GPU time went to (sftbench.kernels): the kernels' short names, and per traced step
    # its kernels as [index into kernel_names, count, nanoseconds] (longest first) and its seconds per family; the
    # number of the epoch's steps each traced step stands for in the projection (an optimizer step: the
    # epoch's optimizer steps), so any per-step quantity projects over the epoch; the projected GPU-minutes per
    # 1000 samples of each family. And the host's work in each traced step: the torch operators it dispatched
    # and the CUDA API calls it made (launches, copies, synchronizations; None where CUPTI could not count them).
    kernel_names: list[str] = field(default_factory=list)
    kernel_step_kernels: list[list[list[int]]] = field(default_factory=list)
    kernel_step_families: list[dict[str, float]] = field(default_factory=list)
    kernel_step_weights: list[float] = field(default_factory=list)
    gpu_minutes_by_family: dict[str, float] | None = None
    kernel_step_operators: list[dict[str, int]] = field(default_factory=list)
    kernel_step_api_calls: list[dict[str, int] | None] = field(default_factory=list)
    optimizer_kernel_s: float | None = None
    gpu_epoch_seconds: float | None = None
    gpu_minutes_per_1000_samples: float | None = None
    gpu_busy_pct: float | None = None  # GPU-minutes / wall minutes
    # How far the projections from the two interleaved halves of the timed steps differ, in % of the whole's:
    # the run's own wall-time spread, stored with a baseline as its noise band (with a floor).
    wall_noise_pct: float | None = None
    trainable_params: int | None = None
    total_params: int | None = None
    # The built model's vocab_size (rows of its input embedding), hidden_size and num_layers, for MFU.
    model_shape: dict[str, int] = field(default_factory=dict)
    memory: MemoryPeaks = field(default_factory=MemoryPeaks)
    # Where a case's wall time goes, in seconds: spawn_s (process start), build_s (CUDA context and model),
    # prepare_s (peft, LoRA, checkpointing), setup_s (those and the data), warmup_s, case_s, wall_s.
    overhead: dict[str, float] = field(default_factory=dict)
    versions: dict[str, str | None] = field(default_factory=dict)
    machine: dict = field(default_factory=dict)  # environment.machine(): GPU, driver, CUDA, settings; gpu_uuid

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> Result:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown result fields: {', '.join(sorted(unknown))}")
        if missing := [f.name for f in dataclasses.fields(cls) if f.name not in data
                       and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]:
            raise ValueError(f"missing result fields: {', '.join(missing)}")
        if data.get("outcome", "ok") not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}, got {data['outcome']!r}")
        values = dict(data)
        try:
            values["memory"] = MemoryPeaks(**data.get("memory", {}))
        except TypeError as error:
            raise ValueError(f"bad memory fields: {error}") from None
        return cls(**values)

    @classmethod
    def from_json(cls, text: str) -> Result:
        return cls.from_dict(json.loads(text))


def describe(result: Result) -> str:
    """One line: the outcome, or speed and memory with the kernel that ran."""
    if result.outcome != "ok":
        return f"{result.outcome.upper()} ({result.message.splitlines()[0][:160] if result.message else ''})"
    mem = result.memory
    reserved = f"{mem.max_reserved_mib:.0f} MiB reserved" if mem.max_reserved_mib is not None else \
        f"{mem.max_rss_mib:.0f} MiB host RSS"
    gpu = "" if result.gpu_minutes_per_1000_samples is None else \
        f" ({result.gpu_minutes_per_1000_samples:.2f} GPU, {result.gpu_busy_pct:.0f}% busy)"
    return (f"{result.minutes_per_1000_samples:.2f} min/1000 samples{gpu} ({result.mode}), "
            f"{result.tokens_per_s:.0f} tok/s, {reserved}, {result.attention}, wall {result.overhead.get('wall_s', 0):.1f} s")
