"""ChatGLM2-6B / ChatGLM3-6B on transformers 5 building blocks.

The original is remote code (`modeling_chatglm.py` of THUDM/chatglm2-6b and THUDM/chatglm3-6b)
that does not run on transformers 5. This file rebuilds it with the original module and
parameter names, so the published checkpoints load unchanged and peft targets the same modules
(`query_key_value`, `dense`, `dense_h_to_4h`, `dense_4h_to_h`).

One layout difference: the original keeps activations sequence-first (seq, batch, hidden); this
one is batch-first like every transformers model. The weights and the arithmetic are the same.

Left out, because fine-tuning with swift never reaches it: p-tuning prefixes (`pre_seq_len`),
int4/int8 weight quantization of the original code, the LayerNorm variant (`rmsnorm` is true
in both releases), `apply_residual_connection_post_layernorm` and `fp32_residual_connection`
(false in both), dropout (0.0) and the chat helpers.
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


class ChatGLMConfig(PreTrainedConfig):
    """The original `configuration_chatglm.ChatGLMConfig` fields; defaults are chatglm3-6b's."""

    model_type = "chatglm"
    keys_to_ignore_at_inference = ["past_key_values"]
    # Standard names that transformers' helpers (caches, loss, generation) look up.
    attribute_map = {"num_hidden_layers": "num_layers", "vocab_size": "padded_vocab_size"}

    padded_vocab_size: int = 65024
    hidden_size: int = 4096
    num_layers: int = 28
    num_attention_heads: int = 32
    kv_channels: int = 128  # per-head width
    multi_query_attention: bool = True
    multi_query_group_num: int = 2  # key/value heads (grouped-query attention)
    ffn_hidden_size: int = 13696
    add_qkv_bias: bool = True
    add_bias_linear: bool = False
    layernorm_epsilon: float = 1e-5
    seq_length: int = 8192
    use_cache: bool = True
    tie_word_embeddings: bool = False


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        # As the original: fp32 variance, the product with the weight computed in fp32, cast at the end.
        input_dtype = hidden_states.dtype
        variance = hidden_states.to(torch.float32).pow(2).mean(-1, keepdim=True)
        return (self.weight * (hidden_states * torch.rsqrt(variance + self.eps))).to(input_dtype)


def rotary_cos_sin(config: ChatGLMConfig, position_ids: torch.Tensor, dtype: torch.dtype):
    """cos/sin of shape (batch, seq, kv_channels // 4): one angle per rotated pair.

    ChatGLM rotates only the first half of each head (kv_channels // 2 dims, as kv_channels // 4
    pairs), with base 10000, and like the original casts the table to the compute dtype.
    """
    rotary_dim = config.kv_channels // 2
    exponents = torch.arange(0, rotary_dim, 2, dtype=torch.float32, device=position_ids.device) / rotary_dim
    inv_freq = 1.0 / (10000**exponents)
    angles = position_ids[..., None].float() * inv_freq
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_interleaved_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (batch, heads, seq, head_dim). Rotates adjacent pairs (x[2i], x[2i+1]) of the first dims."""
    rotary_dim = 2 * cos.shape[-1]
    cos, sin = cos[:, None], sin[:, None]
    pairs = x[..., :rotary_dim].unflatten(-1, (-1, 2))
    even, odd = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack((even * cos - odd * sin, odd * cos + even * sin), dim=-1).flatten(-2)
    return torch.cat((rotated, x[..., rotary_dim:]), dim=-1)


class SelfAttention(nn.Module):
    def __init__(self, config: ChatGLMConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.multi_query_group_num if config.multi_query_attention else config.num_attention_heads
        self.head_dim = config.kv_channels
        # Read by transformers' attention functions: grouped-query, causal.
        self.num_key_value_groups = self.num_heads // self.num_kv_heads
        self.is_causal = True
        self.scaling = self.head_dim**-0.5

        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.query_key_value = nn.Linear(
            config.hidden_size, self.q_size + 2 * self.kv_size, bias=config.add_bias_linear or config.add_qkv_bias
        )
        self.dense = nn.Linear(self.q_size, config.hidden_size, bias=config.add_bias_linear)

    def forward(self, hidden_states, position_embeddings, attention_mask, past_key_values=None, **kwargs):
        batch, seq_len, _ = hidden_states.shape
        query, key, value = self.query_key_value(hidden_states).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        query = query.view(batch, seq_len, self.num_heads, self.head_dim).transpose(1, 2)
        key = key.view(batch, seq_len, self.num_kv_heads, self.head_dim).transpose(1, 2)
        value = value.view(batch, seq_len, self.num_kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = position_embeddings
        query, key = apply_interleaved_rotary(query, cos, sin), apply_interleaved_rotary(key, cos, sin)
        return self.dense(attend(self, query, key, value, attention_mask, past_key_values, **kwargs))


class MLP(nn.Module):
    def __init__(self, config: ChatGLMConfig):
        super().__init__()
        # Gate and up projection fused into one Linear of twice the width (SwiGLU).
        self.dense_h_to_4h = nn.Linear(config.hidden_size, 2 * config.ffn_hidden_size, bias=config.add_bias_linear)
        self.dense_4h_to_h = nn.Linear(config.ffn_hidden_size, config.hidden_size, bias=config.add_bias_linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.dense_h_to_4h(x).chunk(2, dim=-1)
        return self.dense_4h_to_h(nn.functional.silu(gate) * up)


class GLMBlock(GradientCheckpointingLayer):
    def __init__(self, config: ChatGLMConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.layernorm_epsilon)
        self.self_attention = SelfAttention(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.layernorm_epsilon)
        self.mlp = MLP(config)

    def forward(self, hidden_states, position_embeddings, attention_mask, past_key_values=None, **kwargs):
        hidden_states = hidden_states + self.self_attention(
            self.input_layernorm(hidden_states), position_embeddings, attention_mask, past_key_values, **kwargs
        )
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


class Embedding(nn.Module):
    """A wrapper module only to keep the original parameter name `embedding.word_embeddings`."""

    def __init__(self, config: ChatGLMConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.padded_vocab_size, config.hidden_size)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.word_embeddings(input_ids)


class GLMTransformer(nn.Module):
    """The layer stack; named `encoder` in the original although it is a causal decoder."""

    def __init__(self, config: ChatGLMConfig):
        super().__init__()
        self.layers = nn.ModuleList(GLMBlock(config, i) for i in range(config.num_layers))
        self.final_layernorm = RMSNorm(config.hidden_size, config.layernorm_epsilon)


class ChatGLMPreTrainedModel(DecoderPreTrainedModel):
    config: ChatGLMConfig
    # Explicit: with postponed annotations transformers cannot read the class from the annotation above.
    config_class = ChatGLMConfig
    _no_split_modules = ["GLMBlock"]


class ChatGLMModel(ChatGLMPreTrainedModel):
    def __init__(self, config: ChatGLMConfig):
        super().__init__(config)
        self.embedding = Embedding(config)
        self.encoder = GLMTransformer(config)
        # The output head lives in the base model in the original, hence `transformer.output_layer`.
        self.output_layer = nn.Linear(config.hidden_size, config.padded_vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.embedding.word_embeddings

    def set_input_embeddings(self, embeddings):
        self.embedding.word_embeddings = embeddings

    def forward(self, input_ids=None, inputs_embeds=None, **kwargs) -> BaseModelOutputWithPast:
        if inputs_embeds is None:
            inputs_embeds = self.embedding(input_ids)
        rotary = partial(rotary_cos_sin, self.config, dtype=inputs_embeds.dtype)
        hidden_states, past_key_values = run_layers(self, self.encoder.layers, inputs_embeds, rotary, **kwargs)
        hidden_states = self.encoder.final_layernorm(hidden_states)
        return BaseModelOutputWithPast(last_hidden_state=hidden_states, past_key_values=past_key_values)


class ChatGLMForConditionalGeneration(ChatGLMPreTrainedModel, GenerationMixin):
    def __init__(self, config: ChatGLMConfig):
        super().__init__(config)
        self.transformer = ChatGLMModel(config)
        self.post_init()

    def get_output_embeddings(self):
        return self.transformer.output_layer

    def set_output_embeddings(self, embeddings):
        self.transformer.output_layer = embeddings

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs) -> CausalLMOutputWithPast:
        outputs = self.transformer(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        hidden_states = outputs.last_hidden_state
        logits = self.transformer.output_layer(hidden_states)

        loss = None
        if labels is not None:
            # As the original: the loss is computed on fp32 logits (an fp32 copy of the whole
            # logits tensor, which shows in peak memory), then logits and loss go back to the model dtype.
            logits = logits.to(torch.float32)
            shift_logits = logits[..., :-1, :].contiguous()
            shift_labels = labels[..., 1:].contiguous().to(logits.device)
            loss_fct = CrossEntropyLoss(ignore_index=-100)
            loss = loss_fct(shift_logits.view(-1, shift_logits.size(-1)), shift_labels.view(-1))
            logits = logits.to(hidden_states.dtype)
            loss = loss.to(hidden_states.dtype)

        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=outputs.past_key_values)
