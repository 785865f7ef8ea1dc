"""Qwen v1 (Qwen-1.8B/7B/14B/72B-Chat) on transformers 5 building blocks.

The original is remote code (`modeling_qwen.py` of the Qwen/Qwen-*-Chat repositories) that does
not run on transformers 5. This file rebuilds it top to bottom with the original module and
parameter names, so the published checkpoints load unchanged and peft targets the same modules
(`c_attn`, `c_proj`, `w1`, `w2`).

What is left out, on purpose, because fine-tuning never reaches it: dynamic NTK and log-n
attention scaling (the original applies both only outside training, past `seq_length` tokens),
the `bf16/fp16/fp32` precision flags (the caller picks the dtype), dropout (0.0 in every release)
and the chat/generation helpers.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torch.nn import CrossEntropyLoss
from transformers import GenerationMixin, PreTrainedConfig
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .decoder import DecoderPreTrainedModel, attend, run_layers


class QWenConfig(PreTrainedConfig):
    """The original `configuration_qwen.QWenConfig` fields; defaults are Qwen-7B-Chat's."""

    model_type = "qwen"
    keys_to_ignore_at_inference = ["past_key_values"]

    vocab_size: int = 151936
    hidden_size: int = 4096
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    kv_channels: int = 128  # per-head width
    intermediate_size: int = 22016  # twice the MLP's inner width: w1 and w2 each get half
    layer_norm_epsilon: float = 1e-6
    rotary_emb_base: float = 10000.0
    rotary_pct: float = 1.0  # share of each head that is rotated
    seq_length: int = 8192
    max_position_embeddings: int = 8192
    no_bias: bool = True  # no bias anywhere except the fused q/k/v projection
    initializer_range: float = 0.02
    use_cache: bool = True
    tie_word_embeddings: bool = False


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # As the original: normalize in fp32, cast back, then scale.
        x_float = x.float()
        normed = x_float * torch.rsqrt(x_float.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


def rotary_cos_sin(config: QWenConfig, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of shape (batch, seq, rotary_dim) in fp32, halves laid out as (freqs, freqs)."""
    rotary_dim = int(config.kv_channels * config.rotary_pct)
    exponents = torch.arange(0, rotary_dim, 2, dtype=torch.float32, device=position_ids.device) / rotary_dim
    inv_freq = 1.0 / (config.rotary_emb_base**exponents)
    freqs = position_ids[..., None].float() * inv_freq
    angles = torch.cat((freqs, freqs), dim=-1)
    return angles.cos(), angles.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (batch, heads, seq, head_dim). The original rotates in fp32 and casts back."""
    rotary_dim = cos.shape[-1]
    cos, sin = cos[:, None], sin[:, None]
    x_rot, x_pass = x[..., :rotary_dim].float(), x[..., rotary_dim:].float()
    x_rot = x_rot * cos + rotate_half(x_rot) * sin
    return torch.cat((x_rot, x_pass), dim=-1).type_as(x)


class QWenAttention(nn.Module):
    def __init__(self, config: QWenConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.head_dim = config.kv_channels
        self.projection_size = config.kv_channels * config.num_attention_heads
        # Read by transformers' attention functions: plain multi-head, causal.
        self.num_key_value_groups = 1
        self.is_causal = True
        self.scaling = self.head_dim**-0.5

        self.c_attn = nn.Linear(config.hidden_size, 3 * self.projection_size)  # fused q, k, v with bias
        self.c_proj = nn.Linear(self.projection_size, config.hidden_size, bias=not config.no_bias)

    def forward(self, hidden_states, position_embeddings, attention_mask, past_key_values=None, **kwargs):
        batch, seq_len, _ = hidden_states.shape
        heads_shape = (batch, seq_len, self.num_heads, self.head_dim)
        query, key, value = (
            t.view(heads_shape).transpose(1, 2) for t in self.c_attn(hidden_states).split(self.projection_size, dim=-1)
        )
        cos, sin = position_embeddings
        query, key = apply_rotary(query, cos, sin), apply_rotary(key, cos, sin)
        return self.c_proj(attend(self, query, key, value, attention_mask, past_key_values, **kwargs))


class QWenMLP(nn.Module):
    def __init__(self, config: QWenConfig):
        super().__init__()
        inner = config.intermediate_size // 2
        self.w1 = nn.Linear(config.hidden_size, inner, bias=not config.no_bias)
        self.w2 = nn.Linear(config.hidden_size, inner, bias=not config.no_bias)
        self.c_proj = nn.Linear(inner, config.hidden_size, bias=not config.no_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # SwiGLU with Qwen's naming: the gate is w2, not w1.
        return self.c_proj(self.w1(x) * nn.functional.silu(self.w2(x)))


class QWenBlock(GradientCheckpointingLayer):
    def __init__(self, config: QWenConfig, layer_idx: int):
        super().__init__()
        self.ln_1 = RMSNorm(config.hidden_size, config.layer_norm_epsilon)
        self.attn = QWenAttention(config, layer_idx)
        self.ln_2 = RMSNorm(config.hidden_size, config.layer_norm_epsilon)
        self.mlp = QWenMLP(config)

    def forward(self, hidden_states, position_embeddings, attention_mask, past_key_values=None, **kwargs):
        hidden_states = hidden_states + self.attn(
            self.ln_1(hidden_states), position_embeddings, attention_mask, past_key_values, **kwargs
        )
        return hidden_states + self.mlp(self.ln_2(hidden_states))


class QWenPreTrainedModel(DecoderPreTrainedModel):
    config: QWenConfig
    # Explicit: with postponed annotations transformers cannot read the class from the annotation above.
    config_class = QWenConfig
    _no_split_modules = ["QWenBlock"]


class QWenModel(QWenPreTrainedModel):
    _input_embed_layer = "wte"  # lets transformers find the embeddings (enable_input_require_grads)

    def __init__(self, config: QWenConfig):
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.hidden_size)
        self.h = nn.ModuleList(QWenBlock(config, i) for i in range(config.num_hidden_layers))
        self.ln_f = RMSNorm(config.hidden_size, config.layer_norm_epsilon)
        self.post_init()

    def forward(self, input_ids=None, inputs_embeds=None, **kwargs) -> BaseModelOutputWithPast:
        if inputs_embeds is None:
            inputs_embeds = self.wte(input_ids)
        rotary = partial(rotary_cos_sin, self.config)
        hidden_states, past_key_values = run_layers(self, self.h, inputs_embeds, rotary, **kwargs)
        return BaseModelOutputWithPast(last_hidden_state=self.ln_f(hidden_states), past_key_values=past_key_values)


class QWenLMHeadModel(QWenPreTrainedModel, GenerationMixin):
    def __init__(self, config: QWenConfig):
        super().__init__(config)
        self.transformer = QWenModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)  # untied
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs) -> CausalLMOutputWithPast:
        outputs = self.transformer(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        logits = self.lm_head(outputs.last_hidden_state)

        loss = None
        if labels is not None:
            # As the original: shift, and cross-entropy on the logits in the model's dtype (no fp32 upcast).
            shift_logits = logits[..., :-1, :].contiguous()
            shift_labels = labels[..., 1:].contiguous().to(logits.device)
            loss = CrossEntropyLoss()(shift_logits.view(-1, shift_logits.size(-1)), shift_labels.view(-1))

        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=outputs.past_key_values)
