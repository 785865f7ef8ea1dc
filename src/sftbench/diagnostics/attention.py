"""flash-attn's kernels alone, at a result's own shapes: a diagnostic beside the attention families' verdicts.

For a result of a batch-1 flash_attention_2 row (a baseline or a run's result), each traced micro-step's
sequence length is timed directly: `flash_attn_func` on bf16 inputs of the model's heads and head size,
causal, forward and backward, their kernels traced with CUPTI (KernelTimer) and attributed by the families'
rules. Projected like the run's own steps: per micro-step, each layer runs the forward once (twice with
gradient checkpointing, which recomputes it) and the backward once; the traced steps' weights sum them over
the epoch. Run once per flash-attn version, its attention GPU-minutes say what the kernels alone changed,
to set beside the families' deltas of whole runs (`python -m sftbench upgrade`).

`python -m sftbench attention RESULT.json... --out FILE` runs it.
"""

from __future__ import annotations

from importlib import metadata
from statistics import median

import torch

from sftbench.models.user import model_of_case
from sftbench.result import Result, minutes_per_1000_samples
from sftbench.trackers import KernelTimer

FAMILIES = ("attention forward", "attention backward")


def unsupported(result: Result) -> str | None:
    """Why a result's shapes cannot be replayed here (one line), or None."""
    case = result.case
    if case["attention"] != "flash_attention_2" or case["batch_size"] != 1:
        return (f"{result.key}: only batch-1 flash_attention_2 rows (this one: batch {case['batch_size']}, "
                f"{case['attention']})")
    if not result.kernels.projected_steps:
        return f"{result.key}: the result has no traced steps' weights (recorded since kernel families)"
    return None


def attention_kernels(result: Result, repeats: int = 5, calls: int = 10) -> dict:
    """The flash-attn kernel seconds per call at each of the result's traced sequence lengths (the median of
    `repeats` traced blocks of `calls` forward+backward calls), and projected over its epoch."""
    from flash_attn import flash_attn_func

    config = model_of_case(result.case).make_config()
    heads, layers = config.num_attention_heads, config.num_hidden_layers
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads  # Qwen3 sets its own
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    forwards = 2 if result.case["gradient_checkpointing"] else 1
    device = torch.device("cuda")
    timer = KernelTimer(device)
    timer.start()
    per_call: dict[int, dict[str, float]] = {}
    steps = result.kernels.projected_steps
    for length in sorted({step.tokens for step in steps if step.tokens > 0}):
        q = torch.randn(1, length, heads, head_dim, device=device, dtype=torch.bfloat16, requires_grad=True)
        k, v = (torch.randn(1, length, kv_heads, head_dim, device=device, dtype=torch.bfloat16, requires_grad=True)
                for _ in range(2))
        grad = torch.randn_like(q)
        flash_attn_func(q, k, v, causal=True).backward(grad)  # warm-up
        blocks = []
        for _ in range(repeats):
            with timer.step(length):
                for _ in range(calls):
                    flash_attn_func(q, k, v, causal=True).backward(grad)
            blocks.append(timer.collect()[-1].families)
        per_call[length] = {family: median(b.get(family, 0.0) for b in blocks) / calls for family in FAMILIES}
    timer.stop()
    epoch = {family: 0.0 for family in FAMILIES}
    for step in steps:
        if step.tokens > 0:
            epoch["attention forward"] += step.weight * layers * forwards * per_call[step.tokens]["attention forward"]
            epoch["attention backward"] += step.weight * layers * per_call[step.tokens]["attention backward"]
    samples = result.case["samples"]
    return {"key": result.key, "flash-attn": metadata.version("flash-attn"), "heads": heads, "kv_heads": kv_heads,
            "head_dim": head_dim, "layers": layers, "forwards_per_layer": forwards, "repeats": repeats,
            "calls": calls, "seconds_per_call": {str(length): values for length, values in per_call.items()},
            "gpu_minutes_per_1000_samples": {family: minutes_per_1000_samples(seconds, samples)
                                             for family, seconds in epoch.items()}}
