"""The model zoo: every model type of the seed benchmark with its original checkpoint's shapes.

One plain dict, `MODELS`, maps a swift `model_type` to a `ModelEntry`. Models are built from the
config with random weights (for speed and memory benchmarks the values do not matter) or from a
local folder holding the original checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, PreTrainedConfig
from transformers.initialization import no_init_weights
from transformers.modeling_utils import PreTrainedModel

from sftbench import environment

from .chatglm import ChatGLMConfig, ChatGLMForConditionalGeneration
from .qwen import QWenConfig, QWenLMHeadModel


@dataclass(frozen=True)
class ModelEntry:
    model_type: str
    family: str  # "qwen" | "chatglm" | "llama" | "mistral"; a user catalog's model: its config's model_type
    make_config: Callable[[], PreTrainedConfig]  # the original checkpoint's config
    model_class: type  # PreTrainedModel subclass with a causal-LM head: takes labels, returns loss
    lora_default: tuple[str, ...]  # swift's DEFAULT lora_target_modules
    lora_all: tuple[str, ...]  # every Linear except the output head
    total_params: int | None  # the original checkpoint's count (a user model's: its config's); None for tiny types
    source: str  # where the shapes came from (a user model's config.json)


class UnknownModelType(ValueError):
    def __init__(self, model_type: str):
        super().__init__(f"unknown model_type {model_type!r}; known model types: {', '.join(MODELS)}")


LLAMA_LORA_DEFAULT = ("q_proj", "k_proj", "v_proj")
LLAMA_LORA_ALL = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# family: (model class, swift's DEFAULT LoRA targets, ALL: every Linear but the output head).
# Targets are module-name suffixes as peft matches them; Qwen's `c_proj` is both the attention
# and the MLP output projection.
FAMILIES = {
    "qwen": (QWenLMHeadModel, ("c_attn",), ("c_attn", "c_proj", "w1", "w2")),
    "chatglm": (
        ChatGLMForConditionalGeneration,
        ("query_key_value",),
        ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"),
    ),
    "llama": (LlamaForCausalLM, LLAMA_LORA_DEFAULT, LLAMA_LORA_ALL),
    "mistral": (MistralForCausalLM, LLAMA_LORA_DEFAULT, LLAMA_LORA_ALL),
}


def entry(model_type, family, make_config, total_params, source) -> ModelEntry:
    model_class, lora_default, lora_all = FAMILIES[family]
    return ModelEntry(model_type, family, make_config, model_class, lora_default, lora_all, total_params, source)


def yi_config(vocab_size=64000, **shape) -> LlamaConfig:
    # Yi is Llama-shaped; its checkpoints were converted to Llama format (LlamaForCausalLM) in late 2023.
    return LlamaConfig(
        vocab_size=vocab_size,
        rope_theta=5_000_000.0,
        rms_norm_eps=1e-5,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        pad_token_id=0,
        **shape,
    )


def openbuddy_mistral_config(
    vocab_size=36608,
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
) -> MistralConfig:
    # Mistral-7B-v0.1 shapes with OpenBuddy's extended vocabulary (32000 -> 36608 tokens).
    # openbuddy-zephyr-7b-v14.1: 36608 read from its config.json (copied verbatim into
    # TheBloke/openbuddy-zephyr-7B-v14.1-GPTQ). openbuddy-mistral-7b-v13.1: its config.json was not
    # found; 36608 is inferred from the hub listings: the same 1.89 MB tokenizer.json as v14.1 and
    # the same bf16 shards (9.98 GB + 4.58 GB = 14.56 GB = 2 bytes x 7,279,480,832 parameters;
    # a 32000-token vocabulary would give 14.48 GB).
    return MistralConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        max_position_embeddings=32768,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        sliding_window=4096,
        tie_word_embeddings=False,
    )


TINY_LLAMA_SHAPE = dict(
    vocab_size=1000,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
)

MODELS: dict[str, ModelEntry] = {
    entry.model_type: entry
    for entry in [
        entry(
            "qwen-1_8b-chat",
            "qwen",
            lambda: QWenConfig(
                vocab_size=151936,
                hidden_size=2048,
                num_hidden_layers=24,
                num_attention_heads=16,
                intermediate_size=11008,
                seq_length=8192,
                max_position_embeddings=8192,
            ),
            1_836_828_672,
            "Qwen/Qwen-1_8B-Chat config.json",
        ),
        entry(
            "qwen-7b-chat",
            "qwen",
            lambda: QWenConfig(
                vocab_size=151936,
                hidden_size=4096,
                num_hidden_layers=32,
                num_attention_heads=32,
                intermediate_size=22016,
                seq_length=8192,
                max_position_embeddings=8192,
            ),
            7_721_324_544,
            "Qwen/Qwen-7B-Chat config.json",
        ),
        entry(
            "qwen-14b-chat",
            "qwen",
            lambda: QWenConfig(
                vocab_size=152064,
                hidden_size=5120,
                num_hidden_layers=40,
                num_attention_heads=40,
                intermediate_size=27392,
                seq_length=2048,
                max_position_embeddings=8192,
            ),
            14_167_290_880,
            "Qwen/Qwen-14B-Chat config.json",
        ),
        entry(
            "qwen-72b-chat",
            "qwen",
            lambda: QWenConfig(
                vocab_size=152064,
                hidden_size=8192,
                num_hidden_layers=80,
                num_attention_heads=64,
                intermediate_size=49152,
                rotary_emb_base=1_000_000.0,
                seq_length=32768,
                max_position_embeddings=32768,
            ),
            72_287_920_128,
            "Qwen/Qwen-72B-Chat config.json (as in Qwen/Qwen-72B-Chat-Int4)",
        ),
        # chatglm2-6b and chatglm3-6b share every shape; only seq_length differs.
        entry(
            "chatglm2-6b",
            "chatglm",
            lambda: ChatGLMConfig(seq_length=32768),
            6_243_584_000,
            "THUDM/chatglm2-6b config.json",
        ),
        entry(
            "chatglm3-6b",
            "chatglm",
            lambda: ChatGLMConfig(seq_length=8192),
            6_243_584_000,
            "THUDM/chatglm3-6b config.json",
        ),
        entry(
            "yi-6b-chat",
            "llama",
            lambda: yi_config(
                hidden_size=4096,
                intermediate_size=11008,
                num_hidden_layers=32,
                num_attention_heads=32,
                num_key_value_heads=4,
            ),
            6_061_035_520,
            "01-ai/Yi-6B-Chat config.json",
        ),
        entry(
            "yi-34b-chat",
            "llama",
            lambda: yi_config(
                hidden_size=7168,
                intermediate_size=20480,
                num_hidden_layers=60,
                num_attention_heads=56,
                num_key_value_heads=8,
            ),
            34_388_917_248,
            "01-ai/Yi-34B-Chat config.json (as in TheBloke/Yi-34B-Chat-AWQ)",
        ),
        entry(
            "openbuddy-mistral-7b-chat",
            "mistral",
            openbuddy_mistral_config,
            7_279_480_832,
            "OpenBuddy/openbuddy-mistral-7b-v13.1: Mistral-7B-v0.1 shapes, vocab 36608 inferred from its file sizes",
        ),
        entry(
            "openbuddy-zephyr-7b-chat",
            "mistral",
            openbuddy_mistral_config,
            7_279_480_832,
            "OpenBuddy/openbuddy-zephyr-7b-v14.1 config.json (as in TheBloke/openbuddy-zephyr-7B-v14.1-GPTQ)",
        ),
        # Tiny types of the same families, for CPU tests and smoke runs.
        entry(
            "tiny-qwen",
            "qwen",
            lambda: QWenConfig(
                vocab_size=1000,
                hidden_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                kv_channels=16,
                intermediate_size=256,
                seq_length=2048,
                max_position_embeddings=8192,
            ),
            None,
            "tiny test model, Qwen v1 family",
        ),
        entry(
            "tiny-chatglm",
            "chatglm",
            lambda: ChatGLMConfig(
                padded_vocab_size=1000,
                hidden_size=64,
                num_layers=2,
                num_attention_heads=4,
                kv_channels=16,
                multi_query_group_num=2,
                ffn_hidden_size=128,
                seq_length=2048,
            ),
            None,
            "tiny test model, ChatGLM2/3 family",
        ),
        entry(
            "tiny-llama",
            "llama",
            lambda: yi_config(**TINY_LLAMA_SHAPE),
            None,
            "tiny test model, Llama family with Yi's settings",
        ),
        entry(
            "tiny-mistral",
            "mistral",
            lambda: openbuddy_mistral_config(**TINY_LLAMA_SHAPE),
            None,
            "tiny test model, Mistral family with OpenBuddy's settings",
        ),
    ]
}

SEED_MODEL_TYPES = tuple(model_type for model_type, entry in MODELS.items() if entry.total_params is not None)


def get_model(model_type: str) -> ModelEntry:
    try:
        return MODELS[model_type]
    except KeyError:
        raise UnknownModelType(model_type) from None


def as_entry(model: str | ModelEntry) -> ModelEntry:
    """A model type's entry; an entry (a user catalog's model, sftbench.models.user) as it is."""
    return model if isinstance(model, ModelEntry) else get_model(model)


def lora_target_modules(entry: str | ModelEntry, targets: str) -> list[str]:
    """swift's `--lora_target_modules DEFAULT | ALL` resolved to module names, for a model type or its entry."""
    entry = as_entry(entry)
    if targets == "DEFAULT":
        return list(entry.lora_default)
    if targets == "ALL":
        return list(entry.lora_all)
    raise ValueError(f"lora targets must be 'DEFAULT' or 'ALL', got {targets!r}")


def check_attn_implementation(attn_implementation: str) -> None:
    """Raise environment.MissingFlashAttn (an ImportError) for flash_attention_2 without flash-attn."""
    environment.attention_kernel(attn_implementation)


def empty_model(
    entry: ModelEntry,
    device: str | torch.device,
    *,
    dtype: torch.dtype | None = None,
    attn_implementation: str | None = None,
) -> PreTrainedModel:
    """`entry`'s model built from its config directly on `device`, its weights uninitialized.

    torch's and transformers' initializers are skipped: the caller fills the tensors (or, on
    "meta", only counts them). `dtype` and `attn_implementation` left at None are transformers' defaults.
    """
    options = {"dtype": dtype, "attn_implementation": attn_implementation}
    with torch.device(device), no_init_weights():
        return entry.model_class._from_config(
            entry.make_config(), **{name: value for name, value in options.items() if value is not None}
        )


def build_model(
    entry: str | ModelEntry,
    *,
    attn_implementation: str = "sdpa",
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cpu",
    weights_path: str | None = None,
) -> PreTrainedModel:
    """The model (of a model type or its entry) on `device` in `dtype`: random weights, or the checkpoint in
    `weights_path`.

    Every tensor is created directly on `device` (a 7B model is never materialized on the CPU
    first) and initialized once: torch's per-layer init in the constructors is skipped, then
    transformers' normal init (std 0.02, norms at 1) runs, or the checkpoint is copied in tensor
    by tensor.
    """
    entry = as_entry(entry)
    check_attn_implementation(attn_implementation)
    model = empty_model(entry, device, dtype=dtype, attn_implementation=attn_implementation)
    with torch.device(device):
        if weights_path is None:
            model.init_weights()
        else:
            load_checkpoint(model, Path(weights_path))
    return model


def enable_activation_checkpointing(model: PreTrainedModel) -> None:
    """Activation (gradient) checkpointing with non-reentrant autograd, as swift set it up.

    transformers 5.23 renamed gradient_checkpointing_enable to activation_checkpointing_enable (the old name
    warns, and goes in v6); both take the checkpoint's keyword arguments first."""
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable({"use_reentrant": False})


def checkpoint_tensors(folder: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs of a transformers-style checkpoint folder, one tensor at a time."""
    for index_name, single_name in (
        ("model.safetensors.index.json", "model.safetensors"),
        ("pytorch_model.bin.index.json", "pytorch_model.bin"),
    ):
        if (folder / index_name).exists():
            weight_map = json.loads((folder / index_name).read_text())["weight_map"]
            files = sorted(set(weight_map.values()))
        elif (folder / single_name).exists():
            files = [single_name]
        else:
            continue
        for file in files:
            if file.endswith(".safetensors"):
                with safe_open(folder / file, framework="pt") as shard:
                    for name in shard.keys():
                        yield name, shard.get_tensor(name)
            else:
                yield from torch.load(folder / file, map_location="cpu", weights_only=True, mmap=True).items()
        return
    raise FileNotFoundError(
        f"no checkpoint in {folder}: expected model.safetensors, model.safetensors.index.json, "
        "pytorch_model.bin or pytorch_model.bin.index.json"
    )


def load_checkpoint(model: PreTrainedModel, folder: Path) -> None:
    """Copy an original checkpoint into `model`, strictly: every key must match in name and shape.

    The shapes are the registry's: the folder's config.json is not read, so a checkpoint of
    another model fails on its first mismatching tensor. Rotary `inv_freq` tables are the one
    tolerated extra: they are computed from the config, but ChatGLM2/3
    (`transformer.rotary_pos_emb.inv_freq`) and older Llama checkpoints saved them.
    """
    targets = model.state_dict()
    missing = set(targets)
    unexpected = []
    with torch.no_grad():
        for name, tensor in checkpoint_tensors(folder):
            if name not in targets:
                if not name.endswith(".inv_freq"):
                    unexpected.append(name)
                continue
            if targets[name].shape != tensor.shape:
                raise ValueError(
                    f"{name}: checkpoint shape {tuple(tensor.shape)}, model shape {tuple(targets[name].shape)}"
                )
            targets[name].copy_(tensor)
            missing.discard(name)
    if missing or unexpected:
        raise ValueError(
            f"checkpoint in {folder} does not match {type(model).__name__}: "
            f"missing {sorted(missing)}, unexpected {sorted(unexpected)}"
        )


def meta_model(model_type: str) -> PreTrainedModel:
    """The model with shapes only, no memory: for counting."""
    return empty_model(get_model(model_type), "meta")


@cache
def count_parameters(model_type: str) -> int:
    return sum(p.numel() for p in meta_model(model_type).parameters())


def count_lora_trainable(model_type: str, rank: int, targets: str) -> int:
    """Trainable parameters of peft LoRA at `rank` on the DEFAULT or ALL targets."""
    # LoRA adds rank * (in + out) parameters per targeted Linear: peft counts rank 1 once.
    return rank * lora_trainable_at_rank_1(model_type, targets)


@cache
def lora_trainable_at_rank_1(model_type: str, targets: str) -> int:
    from peft import LoraConfig, get_peft_model  # not at import: see sftbench.case

    lora = LoraConfig(r=1, target_modules=lora_target_modules(model_type, targets))
    with torch.device("meta"):
        peft_model = get_peft_model(meta_model(model_type), lora)
    return sum(p.numel() for p in peft_model.parameters() if p.requires_grad)


def models_summary(lora_configs: list[tuple[int, str]]) -> dict:
    """{model_type: {"total_params": n, "trainable_params": {"lora-r8-DEFAULT": n, ...}}} for the seed types."""
    return {
        model_type: {
            "total_params": count_parameters(model_type),
            "trainable_params": {
                f"lora-r{rank}-{targets}": count_lora_trainable(model_type, rank, targets)
                for rank, targets in lora_configs
            },
        }
        for model_type in SEED_MODEL_TYPES
    }
