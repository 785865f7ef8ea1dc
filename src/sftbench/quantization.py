"""The quantized rows of the seed table: bnb NF4 (QLoRA) and GPTQ int4 / int8, with random weights.

What the seed ran (ms-swift, Dec 2023): `--quantization_bit 4` loaded the bf16 checkpoint through
`BitsAndBytesConfig(nf4, double quantization, bf16 compute)`; the GPTQ rows loaded the published
Qwen-*-Chat-Int4 / -Int8 checkpoints (auto-gptq 0.5.1, group size 128, desc_act false) in fp16.

bnb NF4 -- no CPU detour and no fp32 upcast
    The model is built on the meta device, transformers' own `replace_with_bnb_linear` swaps every
    Linear of the decoder (not the output head) for a bnb `Linear4bit`, and each of those weights is
    then made on the device as random bf16 and quantized there, one layer at a time: a 72B bf16
    model never exists, on the CPU or the GPU. swift never called peft's
    `prepare_model_for_kbit_training` (swift/llm/sft.py, swift/llm/utils/model.py and
    swift/llm/tuner.py of that time): it loaded with `from_pretrained(torch_dtype=bf16,
    quantization_config=..., device_map=...)`, switched on gradient checkpointing with
    `enable_input_require_grads()` and added LoRA; its only dtype change was casting *trainable*
    fp16 parameters to fp32 (`fix_fp16_trainable_bug`, for fp16 GPTQ models). So embeddings, norms
    and the head stay bf16 here too, where `prepare_model_for_kbit_training` upcasts them to fp32
    (35620 MiB instead of the seed's 13616 for qwen-7b, facts.md section 4). peft 0.21 creates the
    LoRA weights of a quantized layer in fp32 (the base weight is not floating point), which is
    what swift's cast gave. On the H200 these rows reserve 21-24% less than the seed's (7B/14B/72B),
    while the GPTQ rows are within 1-4%. The seed's bnb rows exceeded its own int4 GPTQ rows by
    ~12 bytes per layer x hidden x token (24.9, 22.7, 24.7 kB per layer x hidden for 7B, 14B, 72B), so
    the gap grows with activations, not with the weights or a checkpoint shard's load transient:
    the seed's bnb path kept more per layer (bitsandbytes 0.41.3 and transformers 4.35 with the
    remote Qwen code); which tensors is not yet measured (docs/gpu-log.md).

GPTQ -- a synthetic checkpoint loaded through transformers' GPTQ quantizer
    No calibration is needed to *load* GPTQ: `synthesize_gptq_checkpoint` writes random qweight,
    symmetric zero points, small scales and g_idx of the exact shapes, shard by shard, in seconds,
    cached per (model_type, bits). It is loaded with `from_pretrained(quantization_config=
    gptq_config(bits))`, i.e. optimum + gptqmodel, with the kernel named explicitly: "torch"
    (gptqmodel's TorchLinear: dequantize the weight, then a dense matmul). That is the seed's
    training path too: swift patched auto-gptq's `QuantLinear.forward` to leave its CUDA kernel in
    training ("fix sft no grad") and take the torch dequantize-and-matmul path. "auto" would
    JIT-compile every CUDA kernel while choosing; TritonV2Linear is the other trainable kernel.
    auto-gptq is unmaintained and does not import on transformers 5 / peft 0.21: `gptq_backend`
    says so instead of crashing.

Checkpoints that do not fit the disk (qwen-72b int8 is 76 GB, int4 41 GB; the GPU machine has
64 GB of disk, and /dev/shm, by default half of its 128 GB of RAM, would hold RAM the run needs) are
not written: the same optimum conversion is applied to a meta model and the quantized buffers are made
directly on the device with the same synthetic values (`_build_gptq_in_place`), so both paths give
the same modules, kernels and numbers.

Importing gptqmodel sets PYTORCH_ALLOC_CONF=expandable_segments:True,... (and CUDA_DEVICE_ORDER)
when they are unset, which would change the allocator and so the memory figures; every import this
module makes keeps the caller's environment.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import json
import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

from packaging.version import Version

from sftbench.spec import QUANTIZATIONS

if TYPE_CHECKING:
    import torch
    from torch import nn
    from transformers import BitsAndBytesConfig, GPTQConfig, PreTrainedModel

    from sftbench.models.registry import ModelEntry

GPTQ_BITS = {"int4-gptq": 4, "int8-gptq": 8}
GPTQ_GROUP_SIZE = 128
GPTQ_KERNEL = "torch"  # gptqmodel TorchLinear, trainable; see the module docstring
GPTQMODEL_MIN_VERSION = Version("7.0")
# Symmetric GPTQ (v1 checkpoint format) stores zero point - 1 in every packed field: 8 - 1, 128 - 1.
GPTQ_QZEROS = {4: 0x77777777, 8: 0x7F7F7F7F}
GPU_EXTRA = "pip install 'sftbench[gpu]'"
GPTQ_EXTRA = "pip install 'sftbench[gptq]'"
SHARD_BYTES = 2 * 2**30
DISK_MARGIN_BYTES = 2 * 2**30  # left free when deciding whether a checkpoint fits
# Variables gptqmodel sets on import when they are unset.
GUARDED_ENVIRON = ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF", "CUDA_DEVICE_ORDER")


class MissingExtra(RuntimeError):
    """A quantization whose packages are not installed or do not import."""


def require(quantization: str) -> None:
    """Raise MissingExtra (one message, naming the extra to install) if `quantization` cannot run here."""
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization {quantization!r}; valid: {', '.join(QUANTIZATIONS)}")
    if quantization == "int4-bnb" and importlib.util.find_spec("bitsandbytes") is None:
        raise MissingExtra(f"int4-bnb needs bitsandbytes, which is not installed: {GPU_EXTRA}")
    if quantization in GPTQ_BITS:
        backend, reason = gptq_backend()
        if backend is None:
            raise MissingExtra(f"{quantization} needs gptqmodel >= 7.0 and optimum ({reason}): {GPTQ_EXTRA}")


@cache
def gptq_backend() -> tuple[str | None, str]:
    """("auto-gptq" | "gptqmodel" | None, why): the GPTQ library this stack can train with.

    auto-gptq only where it is installed, imports and transformers is older than 5 (a stack
    sftbench does not support: there transformers' own GPTQ quantizer would pick auto-gptq); else
    gptqmodel >= 7.0 with optimum where both import. Importing is the test (a broken install is
    caught whatever it raises); it is done once per process, keeping the environment.
    """
    transformers_version = _installed_version("transformers")
    notes = []
    auto_gptq = _installed_version("auto-gptq")
    if auto_gptq is not None:
        error = _import_quietly("auto_gptq")
        if error is not None:
            notes.append(f"auto-gptq {auto_gptq} is installed but does not import on transformers "
                         f"{transformers_version} ({error})")
        elif Version(transformers_version) >= Version("5"):
            notes.append(f"auto-gptq {auto_gptq} imports but does not support transformers {transformers_version} "
                         "(it needs < 5)")
        else:
            return "auto-gptq", f"auto-gptq {auto_gptq} on transformers {transformers_version}"

    gptqmodel, optimum = _installed_version("gptqmodel"), _installed_version("optimum")
    if gptqmodel is None:
        notes.append("gptqmodel is not installed")
    elif Version(gptqmodel) < GPTQMODEL_MIN_VERSION:
        notes.append(f"gptqmodel {gptqmodel} is too old (needs >= {GPTQMODEL_MIN_VERSION})")
    elif optimum is None:
        notes.append(f"gptqmodel {gptqmodel} is installed but optimum is not")
    elif (error := _import_quietly("gptqmodel", "optimum.gptq")) is not None:
        notes.append(f"gptqmodel {gptqmodel} with optimum {optimum} does not import ({error})")
    else:
        return "gptqmodel", "; ".join([*notes, f"using gptqmodel {gptqmodel} with optimum {optimum}"])
    return None, "; ".join(notes)


def _installed_version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


@contextlib.contextmanager
def _kept_environ() -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in GUARDED_ENVIRON}
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _import_quietly(*modules: str) -> str | None:
    """Import `modules`: None if every one imports, else "ExceptionType: message" of the first that fails.

    gptqmodel prints a banner when imported: it is swallowed, and the environment is kept.
    """
    with _kept_environ(), contextlib.redirect_stdout(io.StringIO()):
        for module in modules:
            try:
                importlib.import_module(module)
            except KeyboardInterrupt:
                raise
            except BaseException as error:  # noqa: BLE001 - a broken install may raise anything on import
                return f"{type(error).__name__}: {error}"
    return None


def bnb_config() -> BitsAndBytesConfig:
    """swift's `--quantization_bit 4`: NF4, double quantization, bf16 compute."""
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16)


def gptq_config(bits: int) -> GPTQConfig:
    """The published Qwen-*-Chat-Int4/Int8 settings, loaded with the trainable torch kernel."""
    from transformers import GPTQConfig

    return GPTQConfig(bits=bits, group_size=GPTQ_GROUP_SIZE, desc_act=False, sym=True, backend=GPTQ_KERNEL)


def default_cache_dir() -> Path:
    """Where synthetic GPTQ checkpoints are kept: $SFTBENCH_CACHE_DIR/gptq, else ~/.cache/sftbench/gptq."""
    return Path(os.environ.get("SFTBENCH_CACHE_DIR") or Path.home() / ".cache" / "sftbench") / "gptq"


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
        return _build_bnb(entry, attn_implementation, device)
    if quantization in GPTQ_BITS:
        bits = GPTQ_BITS[quantization]
        cache_dir = Path(cache_dir or default_cache_dir())
        cache_dir.mkdir(parents=True, exist_ok=True)
        fits = (cache_dir / checkpoint_name(entry, bits)).exists() or (
            shutil.disk_usage(cache_dir).free > gptq_checkpoint_bytes(entry, bits) + DISK_MARGIN_BYTES)
        if fits:
            return load_gptq_checkpoint(entry, synthesize_gptq_checkpoint(entry, bits, cache_dir), bits,
                                        attn_implementation=attn_implementation, device=device)
        return _build_gptq_in_place(entry, bits, attn_implementation, device)
    raise ValueError(f"{quantization!r} is not quantized: build it with sftbench.models.build_model")


def describe_quantized(model: nn.Module) -> dict:
    """{"quantization": ..., "backend": "<package> <version> / <layer class> ..."} of a (peft-wrapped) model."""
    for module in model.modules():
        if type(module).__module__.startswith("peft."):
            continue  # LoRA wrappers: their base layers come next
        if hasattr(module, "qweight") and hasattr(module, "bits"):  # a GPTQ kernel layer
            package = type(module).__module__.split(".")[0]
            return {"quantization": f"int{module.bits}-gptq",
                    "backend": f"{package} {_installed_version(package)} / {type(module).__name__}"}
        weight = getattr(module, "weight", None)
        if type(weight).__name__ == "Params4bit":
            double = ", double quant" if weight.compress_statistics else ""
            compute = str(module.compute_dtype).removeprefix("torch.")
            return {"quantization": "int4-bnb",
                    "backend": f"bitsandbytes {_installed_version('bitsandbytes')} / {type(module).__name__} "
                               f"{weight.quant_type}{double}, {compute} compute"}
    return {"quantization": "bf16", "backend": None}


# --- shared helpers -------------------------------------------------------------------------------


class _Synthetic:
    """Stand-in values of the right ranges, made at memory speed by tiling fixed random pools.

    The same on every call and device, so a checkpoint and an in-place build hold equal numbers.
    For speed and memory only the shapes, dtypes and ranges matter.
    """

    POOL = 1_000_003  # prime: the tiling does not line up with rows

    def __init__(self, device: torch.device):
        import torch

        self.device = device
        generator = torch.Generator().manual_seed(0)
        self._sources = {
            "bits": torch.randint(-(2**31), 2**31 - 1, (self.POOL,), dtype=torch.int32, generator=generator),
            "normal": torch.randn(self.POOL, generator=generator) * 0.02,  # as transformers initializes
            "scales": torch.rand(self.POOL, generator=generator) * 9e-3 + 1e-3,  # GPTQ scales are about 1e-3..1e-2
        }
        self._pools: dict[tuple[str, torch.dtype], torch.Tensor] = {}

    def tiled(self, source: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        import torch

        if (source, dtype) not in self._pools:
            self._pools[source, dtype] = self._sources[source].to(device=self.device, dtype=dtype)
        pool = self._pools[source, dtype]
        out = torch.empty(math.prod(shape), dtype=dtype, device=self.device)
        full, rest = divmod(out.numel(), self.POOL)
        if full:
            out[: full * self.POOL].view(full, self.POOL).copy_(pool.expand(full, self.POOL))
        if rest:
            out[full * self.POOL :].copy_(pool[:rest])
        return out.view(shape)

    def parameter(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """An unquantized parameter (`name`: its own name, e.g. weight): matrices normal, biases 0, norm weights 1."""
        import torch

        if len(shape) > 1:
            return self.tiled("normal", shape, dtype)
        return (torch.zeros if name == "bias" else torch.ones)(shape, dtype=dtype, device=self.device)


def _meta_model(entry: ModelEntry, dtype: torch.dtype, attn_implementation: str) -> PreTrainedModel:
    import torch
    from transformers.initialization import no_init_weights

    with torch.device("meta"), no_init_weights():
        return entry.model_class._from_config(entry.make_config(), dtype=dtype, attn_implementation=attn_implementation)


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


def _materialize_unquantized(model: PreTrainedModel, synthetic: _Synthetic, dtype: torch.dtype,
                             quantized: tuple[type, ...]) -> None:
    """Every tensor still on the meta device, on the device: parameters from `synthetic`, buffers
    (rotary tables) computed by transformers' initialization."""
    import torch

    for module in model.modules():
        own = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
        if isinstance(module, quantized) or not any(tensor.is_meta for tensor in own):
            continue
        module.to_empty(device=synthetic.device, recurse=False)
        model._init_weights(module)
        with torch.no_grad():
            for name, parameter in module.named_parameters(recurse=False):
                parameter.copy_(synthetic.parameter(name, tuple(parameter.shape), dtype))


# --- bnb NF4 --------------------------------------------------------------------------------------


def _build_bnb(entry: ModelEntry, attn_implementation: str, device: torch.device) -> PreTrainedModel:
    import bitsandbytes as bnb
    import torch
    from transformers.integrations import replace_with_bnb_linear

    config = bnb_config()
    model = _meta_model(entry, torch.bfloat16, attn_implementation)
    head = next(name for name, module in model.named_modules() if module is model.get_output_embeddings())
    replace_with_bnb_linear(model, modules_to_not_convert=[head], quantization_config=config)
    synthetic = _Synthetic(device)
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            weight = synthetic.tiled("normal", (module.out_features, module.in_features), torch.bfloat16)
            # Params4bit.to(device) quantizes; the bf16 weight is freed before the next layer's is made.
            module.weight = bnb.nn.Params4bit(weight, requires_grad=False, **module.weight.__dict__).to(device)
            if module.bias is not None:
                module.bias = torch.nn.Parameter(torch.zeros(module.out_features, dtype=torch.bfloat16, device=device),
                                                 requires_grad=False)
            del weight
    _materialize_unquantized(model, synthetic, torch.bfloat16, (bnb.nn.Linear4bit,))
    # What transformers' bnb quantizer sets; peft's dispatch wraps Linear4bit only on such a model.
    model.is_loaded_in_4bit = True
    model.config.quantization_config = config
    return model


# --- GPTQ -----------------------------------------------------------------------------------------


def checkpoint_name(entry: ModelEntry, bits: int) -> str:
    return f"{entry.model_type}-gptq-int{bits}"


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
                synthetic: _Synthetic) -> dict[str, torch.Tensor]:
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


def _gptq_tensors(model: nn.Module, bits: int, synthetic: _Synthetic) -> Iterator[tuple[str, torch.Tensor]]:
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

    model = _meta_model(entry, torch.float16, "sdpa")
    return sum(t.numel() * t.element_size() for _, t in _gptq_tensors(model, bits, _Synthetic(torch.device("meta"))))


def synthesize_gptq_checkpoint(entry: ModelEntry, bits: int, out_dir: Path) -> Path:
    """A random-weight GPTQ checkpoint of `entry`'s exact shapes in out_dir/<model_type>-gptq-int<bits>.

    Written shard by shard (memory stays at one shard) into a temporary folder that is renamed
    when complete; an existing one is returned as it is.
    """
    import torch
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    path = out_dir / checkpoint_name(entry, bits)
    if path.exists():
        return path
    out_dir.mkdir(parents=True, exist_ok=True)
    model = _meta_model(entry, torch.float16, "sdpa")
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
        for name, tensor in _gptq_tensors(model, bits, _Synthetic(torch.device("cpu"))):
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

        config = entry.make_config()
        config.quantization_config = gptq_quantization_config(model, bits)
        config.dtype = torch.float16
        config.save_pretrained(tmp)
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

    _import_quietly("gptqmodel")  # now, keeping the environment: from_pretrained's own import is then a no-op
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

    _import_quietly("gptqmodel")
    from optimum.gptq import GPTQQuantizer

    model = _meta_model(entry, torch.float16, attn_implementation)
    quantization_config = {**gptq_quantization_config(model, bits), "backend": GPTQ_KERNEL}
    quantizer = GPTQQuantizer.from_dict(quantization_config)
    quantizer.convert_model(model, device_map={"": str(device)})
    synthetic = _Synthetic(device)
    for module in model.modules():
        if isinstance(module, quantizer.quant_linear):
            layer = _gptq_layer(module.in_features, module.out_features, module.bias is not None, bits,
                                quantizer.group_size, synthetic)
            module._buffers.update(layer)
    _materialize_unquantized(model, synthetic, torch.float16, (quantizer.quant_linear,))
    model = quantizer.post_init_model(model)
    model.config.quantization_config = GPTQConfig.from_dict(quantization_config)
    return model
