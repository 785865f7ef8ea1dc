"""Model FLOPs utilization (MFU): a GPU's peak FLOP/s, a model's FLOPs per token, and their ratio."""

from __future__ import annotations

import re
from functools import cache

from sftbench.result import Result

# Peak dense (no sparsity) bf16 tensor-core FLOP/s by GPU name; a GPU that matches none gets no MFU.
PEAK_BF16_FLOPS = (
    (re.compile(r"H100.*(SXM|HBM3)"), 989e12),
    (re.compile(r"H200(?!.*NVL)"), 989e12),
    (re.compile(r"A100"), 312e12),
)
# Matmul FLOPs per parameter and token, forward + backward: full fine-tuning computes weight gradients,
# LoRA's frozen weights need only the activation gradients.
MATMUL_FLOPS_PER_PARAM = {"full": 6, "lora": 4}

MFU_FORMULA = (
    "MFU = tokens/s × model FLOPs per token ÷ the GPU's peak dense bf16 FLOP/s (H100 SXM and H200 989 T, "
    "A100 312 T; empty for other GPUs). Model FLOPs per token = k·N + 6·L·h·s: N the matmul parameters (the "
    "checkpoint's parameters minus the input embedding, vocabulary × hidden; the untied output head counts), "
    "k = 6 for full fine-tuning and 4 for LoRA (frozen weights need no weight gradients; the adapters' own "
    "FLOPs are left out), 6·L·h·s causal attention forward and backward over L layers of hidden size h, "
    "s the epoch's mean sample length after truncation. Recomputation by gradient checkpointing is not "
    "counted, as usual for MFU; quantized rows count as bf16 matmuls."
)


def peak_bf16_flops(gpu: str | None) -> float | None:
    """The GPU's peak dense bf16 FLOP/s by its name (torch.cuda.get_device_name), None if unknown."""
    for pattern, flops in PEAK_BF16_FLOPS:
        if gpu and pattern.search(gpu):
            return flops
    return None


def model_flops_per_token(result: Result) -> float | None:
    """k·N + 6·L·h·s (see MFU_FORMULA); None where the checkpoint's parameter count is unknown (tiny types)."""
    if result.total_params is None or not result.timing.epoch_tokens:
        return None
    shape = result.model_shape or _zoo_shape(result.case["model_type"])
    vocab, hidden, layers = shape["vocab_size"], shape["hidden_size"], shape["num_layers"]
    matmul_params = result.total_params - vocab * hidden
    mean_length = result.timing.epoch_tokens / result.case["samples"]
    return MATMUL_FLOPS_PER_PARAM[result.case["sft_type"]] * matmul_params + 6 * layers * hidden * mean_length


def mfu(result: Result) -> float | None:
    """Achieved model FLOP/s ÷ the GPU's peak dense bf16 FLOP/s; None where either is unknown."""
    flops, peak = model_flops_per_token(result), peak_bf16_flops(result.machine.get("gpu"))
    if flops is None or peak is None or not result.timing.tokens_per_s:
        return None
    return result.timing.tokens_per_s * flops / peak


@cache
def _zoo_shape(model_type: str) -> dict[str, int]:
    """Result.model_shape from the zoo's config, for results written before that field existed (by sftbench before
    2026-11-29; every committed baseline has it); imports torch and transformers. ChatGLM's embedding is its padded
    vocabulary."""
    from sftbench.models import get_model

    config = get_model(model_type).make_config()
    vocab = getattr(config, "padded_vocab_size", None) or config.vocab_size
    return {"vocab_size": vocab, "hidden_size": config.hidden_size, "num_layers": config.num_hidden_layers}
