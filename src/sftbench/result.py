"""Result: what one case measured, each tracker's record nested in it, as plain dataclasses.

A Result holds the case and its outcome, then one record per tracker (sftbench.trackers): `timing` (the
step timer's wall time and the epoch projected from it), `kernels` (the kernel timer's GPU kernel time, by
kernel and family, with the host's work in each traced step) and `memory` (the memory tracker's peaks).
Reading and writing them as files, with the schema's checks and migrations, is sftbench.storage's job.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from statistics import median
from typing import Literal

from typing_extensions import (
    TypedDict,  # pydantic reads typing's TypedDict only from Python 3.12
)


def minutes_per_1000_samples(epoch_seconds: float, samples: int) -> float:
    """The seed's speed unit, from an epoch of `samples` samples."""
    return epoch_seconds / 60 * 1000 / samples


@dataclass
class MemoryGroup:
    where: str  # the Python line that allocated the blocks (sftbench.memory.allocation_site)
    mib: float
    blocks: int


@dataclass
class MemoryCategories:
    """The bytes alive at the allocated peak of a recorded micro-step of the longest batch and the optimizer step
    after it (sftbench.memory), by what holds them: they add up to peak_mib."""

    peak_mib: float
    trainable_parameters_mib: float
    frozen_parameters_mib: float  # quantized weights, their scales and the model's buffers among them
    gradients_mib: float
    optimizer_states_mib: float
    activations_mib: float  # activations and temporaries: everything else alive then
    slack_mib: float  # reserved minus allocated at that moment
    groups: list[MemoryGroup] = field(default_factory=list)  # the largest of activations and temporaries

    def by_name(self) -> dict[str, float]:
        """MiB of each category by its name in findings (MEMORY_CATEGORIES), the allocator's slack last."""
        return {name: getattr(self, attribute) for name, attribute in MEMORY_CATEGORIES.items()}


SLACK = "allocator slack"  # reserved beyond the allocated peak: held by the allocator, not by a tensor
# Each memory category by its name in findings and reports, and its field of MemoryCategories.
MEMORY_CATEGORIES = {"trainable parameters": "trainable_parameters_mib", "frozen parameters": "frozen_parameters_mib",
                     "gradients": "gradients_mib", "optimizer states": "optimizer_states_mib",
                     "activations and temporaries": "activations_mib", SLACK: "slack_mib"}


@dataclass
class MemoryPeaks:
    max_reserved_mib: float | None = None  # the seed's metric
    max_allocated_mib: float | None = None
    max_active_mib: float | None = None
    nvml_peak_mib: float | None = None  # whole device, sampled; None without nvidia-ml-py
    max_rss_mib: float | None = None  # host memory of the case's process
    categories: MemoryCategories | None = None  # None on the CPU, and in results from before sftbench took them

    @property
    def card_need_mib(self) -> float | None:
        """What a card must hold for the case by its allocated peak: that peak, and what the process held outside
        PyTorch's allocator (NVML's device peak minus the reserved peak: the CUDA context, libraries' own
        memory). The slack a larger card's allocator kept beyond it is not needed: on a smaller card the
        allocator frees its cache and retries before it runs out. None where a peak was not measured."""
        if None in (self.max_allocated_mib, self.max_reserved_mib, self.nvml_peak_mib):
            return None
        return self.max_allocated_mib + max(self.nvml_peak_mib - self.max_reserved_mib, 0.0)


@dataclass
class Timing:
    """Wall time: the timed micro-steps (forward + backward of one batch), device-synchronized, with the padded
    tokens of each; the epoch they project to (quick mode) or that was trained (full mode)."""

    step_durations_s: list[float] = field(default_factory=list)
    step_tokens: list[int] = field(default_factory=list)
    optimizer_step_s: float | None = None  # median of clip + AdamW step + zero_grad
    epoch_micro_batches: int = 0
    epoch_optimizer_steps: int = 0
    epoch_tokens: int = 0  # tokens of the whole epoch after truncation, padding not counted
    epoch_seconds: float | None = None
    minutes_per_1000_samples: float | None = None
    tokens_per_s: float | None = None
    samples_per_s: float | None = None
    # How far the projections from the two interleaved halves of the timed steps differ, in % of the whole's:
    # the run's own wall-time spread, stored with a baseline as its noise band (bounded: sftbench.verdicts).
    wall_noise_pct: float | None = None
    # Host seconds of trackers.host_probe_s before each timed step: how fast the host itself was meanwhile at
    # the work a host-bound step is made of (Python, torch's dispatcher, kernel launches).
    host_probe_s: list[float] = field(default_factory=list)

    @property
    def host_probe_ms(self) -> float | None:
        """The median burst of host_probe_s, in ms; None in a run that did not probe the host."""
        return 1000 * median(self.host_probe_s) if self.host_probe_s else None


@dataclass
class TracedStep:
    """One step traced with CUPTI: its kernels' summed GPU time, by kernel and by family, and the host's work."""

    tokens: int  # padded tokens of the micro-step; 0 for an optimizer step
    seconds: float
    # How many of the epoch's steps it stands for in the projection (an optimizer step: its share of the epoch's
    # optimizer steps); 0.0 for a repeat, traced only to measure how much each family's time repeats; None in
    # results from before sftbench recorded it.
    weight: float | None = None
    repeat_of: int | None = None  # the index of the traced step of the same batch that this one repeats
    kernels: list[list[int]] = field(default_factory=list)  # [index into Kernels.names, count, nanoseconds]
    families: dict[str, float] = field(default_factory=dict)  # seconds per family, by Kernels.rules
    sm_mhz: int | None = None  # the GPU's mean SM clock through the step (NVML)
    operators: dict[str, int] = field(default_factory=dict)  # torch operator -> calls
    api_calls: dict[str, int] | None = None  # CUDA API function -> calls; None where CUPTI could not count them


@dataclass
class Kernels:
    """GPU kernel time (CUPTI): the traced steps, the kernels' short names they index, the version of the family
    rules that classified them, and the epoch's GPU time projected from the steps' weights."""

    clock: str | None = None  # "cupti-python 13.0.1", "unavailable: why", None where the case never trained
    names: list[str] = field(default_factory=list)
    steps: list[TracedStep] = field(default_factory=list)
    rules: str | None = None  # sftbench.kernels.rules_version() of the families stored; None: classify again
    # In how many traced steps NVML reported each reason that held the clock down ("power cap": 7); {} where it
    # reported none, None where it was not read.
    clock_limits: dict[str, int] | None = None
    optimizer_s: float | None = None
    epoch_seconds: float | None = None
    gpu_minutes_per_1000_samples: float | None = None
    gpu_minutes_by_family: dict[str, float] | None = None
    busy_pct: float | None = None  # GPU-minutes / wall minutes

    @property
    def projected_steps(self) -> list[TracedStep]:
        """The steps the projection weighs (repeats and unweighted steps left out)."""
        return [step for step in self.steps if step.weight]

    @property
    def micro_steps(self) -> float:
        """How many micro-steps of the epoch the projection stands for."""
        return sum(step.weight for step in self.projected_steps if step.tokens > 0)


class Machine(TypedDict, total=False):
    """What a result ran on (environment.machine(), and the GPU's UUID from the case)."""

    gpu: str  # its model, by NVML's name; "cpu" without one
    driver: str | None
    cuda: str | None
    gpu_memory_mib: int | None
    host: list[str]  # the UUIDs of the host's GPUs, else its hostname: wall time is judged only within a host
    allocator: str
    settings: dict[str, str]  # the environment variables that change speed or memory (environment.SETTINGS)
    gpu_uuid: str | None
    compute_capability: str | None  # "9.0": GPUs of one capability and stack hold the same tensors (memory verdicts)


# The compute capability of the GPU models whose results predate Machine["compute_capability"] (2026-12-06).
KNOWN_CAPABILITIES = {"NVIDIA H100 80GB HBM3": "9.0", "NVIDIA H200": "9.0"}


def compute_capability(machine: Machine) -> str | None:
    return machine.get("compute_capability") or KNOWN_CAPABILITIES.get(machine.get("gpu", ""))


@dataclass
class Result:
    case: dict  # CaseSpec.to_dict()
    key: str  # CaseSpec.key
    outcome: Literal["ok", "oom", "error"] = "ok"
    message: str = ""
    mode: Literal["quick", "full"] = "quick"  # quick: representative steps timed, projected; full: every step
    attention: str | None = None  # the kernel that actually ran (model.config._attn_implementation)
    quantization_backend: str | None = None
    timing: Timing = field(default_factory=Timing)
    kernels: Kernels = field(default_factory=Kernels)
    memory: MemoryPeaks = field(default_factory=MemoryPeaks)
    trainable_params: int | None = None
    total_params: int | None = None
    # The built model's vocab_size (rows of its input embedding), hidden_size and num_layers, for MFU.
    model_shape: dict[str, int] = field(default_factory=dict)
    # Where a case's wall time goes, in seconds: spawn_s (process start), build_s (CUDA context and model),
    # prepare_s (peft, LoRA, checkpointing), setup_s (those and the data), warmup_s, case_s, wall_s.
    overhead: dict[str, float] = field(default_factory=dict)
    versions: dict[str, str | None] = field(default_factory=dict)
    machine: Machine = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class Metrics:
    """What a run record and a summary line keep of a result: its outcome and the numbers judged and shown."""

    outcome: str = "ok"
    message: str = ""  # an OOM's or error's first line
    mode: str = "quick"
    attention: str | None = None
    minutes_per_1000_samples: float | None = None
    gpu_minutes_per_1000_samples: float | None = None
    gpu_busy_pct: float | None = None
    tokens_per_s: float | None = None
    wall_noise_pct: float | None = None
    wall_s: float | None = None
    host_probe_ms: float | None = None  # Timing.host_probe_ms
    max_reserved_mib: float | None = None
    max_allocated_mib: float | None = None
    max_rss_mib: float | None = None
    gpu_minutes_by_family: dict[str, float] | None = None

    @classmethod
    def of(cls, result: Result) -> Metrics:
        kernels, timing, memory = result.kernels, result.timing, result.memory
        return cls(outcome=result.outcome, message=result.message.split("\n")[0][:300], mode=result.mode,
                   attention=result.attention, minutes_per_1000_samples=timing.minutes_per_1000_samples,
                   gpu_minutes_per_1000_samples=kernels.gpu_minutes_per_1000_samples, gpu_busy_pct=kernels.busy_pct,
                   tokens_per_s=timing.tokens_per_s, wall_noise_pct=timing.wall_noise_pct,
                   wall_s=result.overhead.get("wall_s"),
                   host_probe_ms=timing.host_probe_ms,
                   max_reserved_mib=memory.max_reserved_mib,
                   max_allocated_mib=memory.max_allocated_mib, max_rss_mib=memory.max_rss_mib,
                   gpu_minutes_by_family=kernels.gpu_minutes_by_family)
