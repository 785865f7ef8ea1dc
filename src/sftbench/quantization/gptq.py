"""The seed's GPTQ int4 / int8 rows: a random-weight GPTQ checkpoint, loaded through transformers' GPTQ quantizer.

The seed (ms-swift's training benchmark, Dec 2023, whose tables sftbench reproduces) loaded the
published Qwen-*-Chat-Int4 / -Int8 checkpoints (auto-gptq 0.5.1, group size 128, desc_act false) in
fp16. Loading GPTQ needs no calibration: `synthesize_gptq_checkpoint` writes random qweight,
symmetric zero points, small scales and g_idx of the exact shapes, and `from_pretrained` loads it
through optimum + gptqmodel.

Checkpoints are cached between runs (writing a 72B one takes minutes). The folder's name carries a
digest of what its bytes depend on (`checkpoint_key`): the model's config as written, bits, group
size, shard size, sftbench's synthetic layout (CHECKPOINT_FORMAT) and the safetensors and transformers
versions, so a checkpoint of other shapes or another stack is never reused; those of other stacks stay
in the cache folder until it is deleted. The built model says whether the cache was hit
(`checkpoint_overhead`).

The kernel is named explicitly, "torch" (gptqmodel's TorchLinear: dequantize, then a dense matmul):
the seed trained the same way, swift sent auto-gptq's `QuantLinear.forward` down its torch path in
training. "auto" would JIT-compile every CUDA kernel while choosing. TorchLinear wraps its dequantization
in torch.compile; the trainer runs it eagerly, as the seed did and as a traced step must (sftbench.trainer).

A checkpoint that does not fit the free disk is not written: `_build_gptq_in_place` applies the same
optimum conversion to a meta model and makes the quantized buffers on the device from the same
synthetic values, so both paths give the same modules, kernels and numbers.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from .probe import import_quietly, installed_version
from .synthetic import Synthetic, materialize_unquantized

if TYPE_CHECKING:
    import torch
    from torch import nn
    from transformers import GPTQConfig, PreTrainedModel

    from sftbench.models.registry import ModelEntry

GPTQ_BITS = {"int4-gptq": 4, "int8-gptq": 8}
GPTQ_GROUP_SIZE = 128
GPTQ_KERNEL = "torch"  # gptqmodel TorchLinear, trainable; see the module docstring
# Symmetric GPTQ (v1 checkpoint format) stores zero point - 1 in every packed field: 8 - 1, 128 - 1.
GPTQ_QZEROS = {4: 0x77777777, 8: 0x7F7F7F7F}
SHARD_BYTES = 2 * 2**30
DISK_MARGIN_BYTES = 2 * 2**30  # left free when deciding whether a checkpoint fits
# The version of the synthetic checkpoint's layout and values (_gptq_tensors, synthetic.py, the files
# written): raise it with any change there, so that cached checkpoints are written again.
CHECKPOINT_FORMAT = 1


def gptq_config(bits: int) -> GPTQConfig:
    """The published Qwen-*-Chat-Int4/Int8 settings, loaded with the trainable torch kernel."""
    from transformers import GPTQConfig

    return GPTQConfig(bits=bits, group_size=GPTQ_GROUP_SIZE, desc_act=False, sym=True, backend=GPTQ_KERNEL)


def default_cache_dir() -> Path:
    """Where synthetic GPTQ checkpoints are kept: $SFTBENCH_CACHE_DIR/gptq, else ~/.cache/sftbench/gptq."""
    return Path(os.environ.get("SFTBENCH_CACHE_DIR") or Path.home() / ".cache" / "sftbench") / "gptq"


def build_gptq(entry: ModelEntry, bits: int, attn_implementation: str, device: torch.device,
               cache_dir: Path) -> PreTrainedModel:
    """`entry`'s model in fp16 on `device` with random GPTQ weights: from the cached or newly written
    checkpoint in `cache_dir`, or built on the device where that checkpoint would not fit the free disk."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    hit = (cache_dir / checkpoint_name(entry, bits)).exists()
    if hit or shutil.disk_usage(cache_dir).free > gptq_checkpoint_bytes(entry, bits) + DISK_MARGIN_BYTES:
        started = time.perf_counter()
        path = synthesize_gptq_checkpoint(entry, bits, cache_dir)
        written_s = 0.0 if hit else time.perf_counter() - started
        model = load_gptq_checkpoint(entry, path, bits, attn_implementation=attn_implementation, device=device)
        model.sftbench_checkpoint_overhead = {"gptq_cache_hit": float(hit), "gptq_checkpoint_write_s": written_s}
        return model
    model = _build_gptq_in_place(entry, bits, attn_implementation, device)
    model.sftbench_checkpoint_overhead = {"gptq_cache_hit": 0.0}
    return model


def checkpoint_overhead(model: nn.Module) -> dict[str, float]:
    """What the GPTQ checkpoint cost a model from build_gptq, for Result.overhead: gptq_cache_hit (1.0: the
    cached checkpoint was loaded, 0.0: written now, or built on the device without one) and
    gptq_checkpoint_write_s (where a checkpoint was used); {} for other models."""
    return dict(getattr(model, "sftbench_checkpoint_overhead", {}))


def checkpoint_key(entry: ModelEntry, bits: int) -> dict:
    """What the bytes of `entry`'s synthetic checkpoint depend on; its digest names the cached folder."""
    model = _fp16_meta_model(entry)
    config = _checkpoint_config(entry, model, bits).to_json_string(use_diff=False)
    return {"model_type": entry.model_type, "bits": bits, "group_size": gptq_group_size(model),
            "config_sha256": hashlib.sha256(config.encode()).hexdigest(), "shard_bytes": SHARD_BYTES,
            "format": CHECKPOINT_FORMAT, "safetensors": installed_version("safetensors"),
            "transformers": installed_version("transformers")}


def checkpoint_name(entry: ModelEntry, bits: int) -> str:
    """<model_type>-gptq-int<bits>-<digest of checkpoint_key>."""
    key = json.dumps(checkpoint_key(entry, bits), sort_keys=True)
    return f"{entry.model_type}-gptq-int{bits}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def _checkpoint_config(entry: ModelEntry, model: nn.Module, bits: int):
    """The config.json of the checkpoint: the model's config with its quantization_config, in fp16."""
    import torch

    config = entry.make_config()
    config.quantization_config = gptq_quantization_config(model, bits)
    config.dtype = torch.float16
    return config


def _fp16_meta_model(entry: ModelEntry, attn_implementation: str = "sdpa") -> PreTrainedModel:
    """`entry`'s model in fp16 on the meta device: the shapes a GPTQ checkpoint is made for."""
    import torch

    from sftbench.models.registry import empty_model

    return empty_model(entry, "meta", dtype=torch.float16, attn_implementation=attn_implementation)


def _decoder_blocks(model: nn.Module) -> str:
    """Name of the ModuleList of decoder layers (transformer.h, transformer.encoder.layers, model.layers)."""
    from torch import nn

    return next(name for name, module in model.named_modules() if isinstance(module, nn.ModuleList))


def _quantized_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """The Linear layers that are quantized: every one in the decoder layers (so not the output head)."""
    from torch import nn

    prefix = _decoder_blocks(model) + "."
    return {name: module for name, module in model.named_modules()
            if type(module) is nn.Linear and name.startswith(prefix)}


def gptq_group_size(model: nn.Module) -> int:
    """128 as published; tiny test models whose widths are not multiples of 128 get the largest that divides."""
    widths = {module.in_features for module in _quantized_linears(model).values()}
    for group_size in (GPTQ_GROUP_SIZE, 64, 32, 16):
        if all(width % group_size == 0 for width in widths):
            return group_size
    raise ValueError(f"no GPTQ group size divides the input widths {sorted(widths)}")


def gptq_quantization_config(model: nn.Module, bits: int) -> dict:
    """The checkpoint's `quantization_config`, as GPTQ checkpoints carry it in config.json."""
    return {"quant_method": "gptq", "bits": bits, "group_size": gptq_group_size(model), "desc_act": False,
            "sym": True, "checkpoint_format": "gptq", "block_name_to_quantize": _decoder_blocks(model)}


def _gptq_layer(in_features: int, out_features: int, bias: bool, bits: int, group_size: int,
                synthetic: Synthetic) -> dict[str, torch.Tensor]:
    """A quantized Linear's tensors in the GPTQ v1 layout (packed along the input, int32 words)."""
    import torch

    per_word = 32 // bits
    groups = in_features // group_size
    tensors = {
        "qweight": synthetic.tiled("bits", (in_features // per_word, out_features), torch.int32),
        "qzeros": torch.full((groups, out_features // per_word), GPTQ_QZEROS[bits], dtype=torch.int32,
                             device=synthetic.device),
        "scales": synthetic.tiled("scales", (groups, out_features), torch.float16),
        "g_idx": torch.arange(in_features, dtype=torch.int32, device=synthetic.device) // group_size,
    }
    if bias:
        tensors["bias"] = torch.zeros(out_features, dtype=torch.float16, device=synthetic.device)
    return tensors


def _gptq_tensors(model: nn.Module, bits: int, synthetic: Synthetic) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of every tensor of the GPTQ checkpoint of `model` (a meta model), module by module."""
    import torch

    quantized = _quantized_linears(model)
    group_size = gptq_group_size(model)
    for prefix, module in model.named_modules():
        if prefix in quantized:
            layer = _gptq_layer(module.in_features, module.out_features, module.bias is not None, bits, group_size,
                                synthetic)
            yield from ((f"{prefix}.{name}", tensor) for name, tensor in layer.items())
            continue
        for name, parameter in module.named_parameters(recurse=False):
            key = f"{prefix}.{name}" if prefix else name
            yield key, synthetic.parameter(name, tuple(parameter.shape), torch.float16)


def gptq_checkpoint_bytes(entry: ModelEntry, bits: int) -> int:
    """Size of the synthetic checkpoint's tensors, counted on the meta device (nothing is made)."""
    import torch

    tensors = _gptq_tensors(_fp16_meta_model(entry), bits, Synthetic(torch.device("meta")))
    return sum(t.numel() * t.element_size() for _, t in tensors)


def synthesize_gptq_checkpoint(entry: ModelEntry, bits: int, out_dir: Path) -> Path:
    """A random-weight GPTQ checkpoint of `entry`'s exact shapes in out_dir/`checkpoint_name`.

    Written shard by shard (memory stays at one shard) into a temporary folder that is renamed
    when complete, with its key in sftbench-checkpoint-key.json; an existing one is returned as it is.
    """
    import torch
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    path = out_dir / checkpoint_name(entry, bits)
    if path.exists():
        return path
    out_dir.mkdir(parents=True, exist_ok=True)
    model = _fp16_meta_model(entry)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=f".{path.name}.", ignore_cleanup_errors=True) as tmp:
        tmp = Path(tmp)
        shards, weight_map, total = [], {}, 0
        shard: dict[str, torch.Tensor] = {}

        def flush() -> None:
            file = f"model-{len(shards) + 1:05d}.safetensors"
            save_file(shard, tmp / file, metadata={"format": "pt"})
            shards.append(file)
            weight_map.update(dict.fromkeys(shard, file))
            shard.clear()

        shard_bytes = 0
        for name, tensor in _gptq_tensors(model, bits, Synthetic(torch.device("cpu"))):
            shard[name] = tensor
            shard_bytes += tensor.numel() * tensor.element_size()
            total += tensor.numel() * tensor.element_size()
            if shard_bytes >= SHARD_BYTES:
                flush()
                shard_bytes = 0
        if shard:
            flush()
        # Conventional names, model-0000i-of-0000n, once n is known.
        renamed = {file: f"{file.removesuffix('.safetensors')}-of-{len(shards):05d}.safetensors" for file in shards}
        for old, new in renamed.items():
            (tmp / old).rename(tmp / new)
        index = {"metadata": {"total_size": total}, "weight_map": {k: renamed[v] for k, v in weight_map.items()}}
        (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))

        _checkpoint_config(entry, model, bits).save_pretrained(tmp)
        (tmp / "sftbench-checkpoint-key.json").write_text(json.dumps(checkpoint_key(entry, bits), indent=1))
        tmp.chmod(0o755)  # mkdtemp made it private
        try:
            tmp.rename(path)
        except OSError:  # another process finished the same checkpoint first
            if not path.exists():
                raise
    return path


def load_gptq_checkpoint(entry: ModelEntry, path: Path, bits: int, *, attn_implementation: str = "sdpa",
                         device: str | torch.device = "cuda") -> PreTrainedModel:
    """A GPTQ checkpoint of `entry`'s family through transformers' GPTQ quantizer (optimum + gptqmodel), in fp16."""
    import torch

    import_quietly("gptqmodel")  # now, keeping the environment: from_pretrained's own import is then a no-op
    # The config class is passed: transformers cannot resolve our models' `config: QWenConfig`
    # annotations (a string under `from __future__ import annotations`).
    config = type(entry.make_config()).from_pretrained(path)
    with warnings.catch_warnings():
        # "the quantization_config from the model will be used ... loading attributes will be overwritten": intended.
        warnings.filterwarnings("ignore", message="You passed `quantization_config`")
        return entry.model_class.from_pretrained(
            path, config=config, quantization_config=gptq_config(bits), device_map={"": str(device)},
            dtype=torch.float16, attn_implementation=attn_implementation)


def _build_gptq_in_place(entry: ModelEntry, bits: int, attn_implementation: str,
                         device: torch.device) -> PreTrainedModel:
    """What from_pretrained does with a GPTQ checkpoint, with the synthetic tensors made on the device."""
    import torch
    from transformers import GPTQConfig

    import_quietly("gptqmodel")
    from optimum.gptq import GPTQQuantizer

    model = _fp16_meta_model(entry, attn_implementation)
    quantization_config = {**gptq_quantization_config(model, bits), "backend": GPTQ_KERNEL}
    quantizer = GPTQQuantizer.from_dict(quantization_config)
    quantizer.convert_model(model, device_map={"": str(device)})
    synthetic = Synthetic(device)
    for module in model.modules():
        if isinstance(module, quantizer.quant_linear):
            layer = _gptq_layer(module.in_features, module.out_features, module.bias is not None, bits,
                                quantizer.group_size, synthetic)
            module._buffers.update(layer)
    materialize_unquantized(model, synthetic, torch.float16, (quantizer.quant_linear,))
    model = quantizer.post_init_model(model)
    model.config.quantization_config = GPTQConfig.from_dict(quantization_config)
    return model
