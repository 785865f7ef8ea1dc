"""CaseSpec: one training configuration, frozen, validated, with a stable key; RunOptions: how it is measured.

A spec says *what* is trained; how it is measured (quick projection or full epoch) is a run option.
Two seed rows with equal specs are the same configuration and are trained once per pytest run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

SFT_TYPES = ("lora", "full")
QUANTIZATIONS = ("bf16", "int4-gptq", "int8-gptq", "int4-bnb")
ATTENTIONS = ("flash_attention_2", "sdpa", "eager")
LORA_TARGETS = ("DEFAULT", "ALL")
DEVICES = ("cuda", "cpu")


class InvalidSpec(ValueError):
    """A configuration that cannot be trained (an impossible combination, an unknown value or one of the wrong type)."""


@dataclass(frozen=True)
class UserModel:
    """A model of a user catalog (sftbench.user_catalog): built from its config.json by transformers' own class.

    The case's process builds it from this alone (sftbench.models.user). None target lists are the defaults: swift's
    q_proj, k_proj, v_proj for DEFAULT, every Linear but the output head for ALL."""

    config: str  # the absolute path of its config.json
    lora_default: tuple[str, ...] | None = None
    lora_all: tuple[str, ...] | None = None


@dataclass(frozen=True)
class CaseSpec:
    model_type: str
    sft_type: str = "lora"
    quantization: str = "bf16"
    max_length: int = 2048
    batch_size: int = 1
    gradient_checkpointing: bool = True
    attention: str = "flash_attention_2"
    lora_rank: int = 8
    lora_targets: str = "DEFAULT"
    samples: int = 1000
    truncation: str = "left"
    device: str = "cuda"
    weights_path: str | None = None  # a local checkpoint folder instead of random weights
    user_model: UserModel | None = None  # model_type names a model of a user catalog, not of the zoo

    def __post_init__(self) -> None:
        for name in ("max_length", "batch_size", "samples", "lora_rank"):
            if type(getattr(self, name)) is not int:  # a bool is an int, but not a length
                raise InvalidSpec(f"{name} must be a whole number, got {getattr(self, name)!r}")
        if type(self.gradient_checkpointing) is not bool:
            raise InvalidSpec(f"gradient_checkpointing must be true or false, got {self.gradient_checkpointing!r}")
        _check_choice("sft_type", self.sft_type, SFT_TYPES)
        _check_choice("quantization", self.quantization, QUANTIZATIONS)
        _check_choice("attention", self.attention, ATTENTIONS)
        _check_choice("lora_targets", self.lora_targets, LORA_TARGETS)
        _check_choice("device", self.device, DEVICES)
        _check_choice("truncation", self.truncation, ("left",))
        for name in ("max_length", "batch_size", "samples"):
            if getattr(self, name) < 1:
                raise InvalidSpec(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.sft_type == "lora" and self.lora_rank < 1:
            raise InvalidSpec(f"LoRA needs lora_rank >= 1, got {self.lora_rank}")
        if self.sft_type == "full" and self.quantization != "bf16":
            raise InvalidSpec(f"full fine-tuning of a {self.quantization} model is impossible: quantized weights "
                              "are frozen; use sft_type='lora'")
        if self.weights_path and self.quantization != "bf16":
            raise InvalidSpec(f"{self.quantization} rows use synthetic quantized weights; a checkpoint folder "
                              "(weights_path) is for bf16 rows")
        if self.device == "cpu" and (self.quantization != "bf16" or self.attention == "flash_attention_2"):
            raise InvalidSpec(f"{self.quantization} / {self.attention} need a CUDA GPU, not the CPU")

    @property
    def key(self) -> str:
        """A readable, unique name of the configuration: the baseline file name."""
        parts = [self.model_type, self.sft_type, self.quantization, f"len{self.max_length}",
                 f"bs{self.batch_size}", "gc" if self.gradient_checkpointing else "nogc", self.attention]
        if self.sft_type == "lora":
            parts.append(f"r{self.lora_rank}-{self.lora_targets}")
        if self.samples != 1000:
            parts.append(f"n{self.samples}")
        if self.device != "cuda":
            parts.append(self.device)
        if self.weights_path:
            parts.append("weights")
        return ".".join(parts)

    @property
    def gradient_accumulation_steps(self) -> int:
        # swift: ceil(16 / batch_size / world_size), one GPU.
        return -(-16 // self.batch_size)

    def replace(self, **changes) -> CaseSpec:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise InvalidSpec(f"unknown {name} {value!r}; choose one of {', '.join(map(str, choices))}")


@dataclass(frozen=True)
class RunOptions:
    full_epoch: bool = False
    # Timed representative micro-steps of the quick mode, which then times the longest and the shortest batch
    # trainer.FAMILY_REPEATS more times each: 12 timed steps, the Wilcoxon test's pairs for wall time
    # (verdicts.MIN_PAIRED_STEPS). GPU time repeats per batch shape, so few shapes project it: replayed on the H200
    # references of docs/measurements.md section 9 (LoRA 512, 2048 and 8192; scripts/replay_representatives.py),
    # 8 representatives projected the epoch's GPU-minutes within -0.18..+0.18%, 12 within 0.00..+0.34%. Wall time of the
    # 0.2-s steps jitters more: 8 of section 17's 16 steps projected the wall minutes within -7.9..+4.6% of all 16
    # (section 18), while whole runs of one host moved by -20..+30% between them: the wall-time band is 40%.
    representative_steps: int = 8
    # Untimed micro-steps after the warm-up (which already ran the shortest and the longest batch) and the start of
    # tracing: 1 and 4 against a reference of 400 steps in section 19.
    settle_steps: int = 1
    attn_fallback: str | None = None  # kernel to use where flash-attn is missing, e.g. "sdpa"

    @property
    def mode(self) -> str:
        """quick: representative steps timed and the epoch projected; full: the whole epoch trained."""
        return "full" if self.full_epoch else "quick"
