"""The quantized rows of the seed's tables: bnb NF4 (QLoRA) and GPTQ int4 / int8, with random weights.

The seed is ms-swift's training benchmark (Dec 2023), whose tables sftbench reproduces. `probe`
says which quantization libraries import, `bnb` and `gptq` build the models, `synthetic` makes
their stand-in values. Importing this package imports no torch, transformers or quantization library.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .bnb import bnb_config, build_bnb
from .gptq import (
    GPTQ_BITS,
    build_gptq,
    checkpoint_overhead,
    default_cache_dir,
    gptq_checkpoint_bytes,
    gptq_config,
    gptq_group_size,
    synthesize_gptq_checkpoint,
)
from .probe import MissingExtra, gptq_backend, installed_version, require

if TYPE_CHECKING:
    import torch
    from torch import nn
    from transformers import PreTrainedModel

    from sftbench.models.registry import ModelEntry

__all__ = [
    "MissingExtra",
    "bnb_config",
    "build_quantized_model",
    "checkpoint_overhead",
    "default_cache_dir",
    "describe_quantized",
    "gptq_backend",
    "gptq_checkpoint_bytes",
    "gptq_config",
    "gptq_group_size",
    "require",
    "synthesize_gptq_checkpoint",
]


def build_quantized_model(entry: ModelEntry, quantization: str, *, attn_implementation: str = "sdpa",
                          device: str | torch.device = "cuda", cache_dir: Path | None = None) -> PreTrainedModel:
    """The model of `entry` with random weights, quantized as the seed's row `quantization` was.

    bnb is built in bf16, GPTQ in fp16 (as the seed loaded it). LoRA, gradient checkpointing and
    `enable_input_require_grads` are the caller's, as for bf16 models.
    """
    import torch

    from sftbench.models.registry import check_attn_implementation

    require(quantization)
    check_attn_implementation(attn_implementation)
    device = torch.device(device)
    if quantization == "int4-bnb":
        return build_bnb(entry, attn_implementation, device)
    if quantization in GPTQ_BITS:
        return build_gptq(entry, GPTQ_BITS[quantization], attn_implementation, device,
                          Path(cache_dir or default_cache_dir()))
    raise ValueError(f"{quantization!r} is not quantized: build it with sftbench.models.build_model")


def describe_quantized(model: nn.Module) -> dict:
    """{"quantization": ..., "backend": "<package> <version> / <layer class> ..."} of a (peft-wrapped) model."""
    for module in model.modules():
        if type(module).__module__.startswith("peft."):
            continue  # LoRA wrappers: their base layers come next
        if hasattr(module, "qweight") and hasattr(module, "bits"):  # a GPTQ kernel layer
            package = type(module).__module__.split(".")[0]
            return {"quantization": f"int{module.bits}-gptq",
                    "backend": f"{package} {installed_version(package)} / {type(module).__name__}"}
        weight = getattr(module, "weight", None)
        if type(weight).__name__ == "Params4bit":
            double = ", double quant" if weight.compress_statistics else ""
            compute = str(module.compute_dtype).removeprefix("torch.")
            return {"quantization": "int4-bnb",
                    "backend": f"bitsandbytes {installed_version('bitsandbytes')} / {type(module).__name__} "
                               f"{weight.quant_type}{double}, {compute} compute"}
    return {"quantization": "bf16", "backend": None}
