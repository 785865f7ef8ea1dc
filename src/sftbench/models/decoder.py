"""The transformers plumbing that the Qwen v1 and ChatGLM2/3 rebuilds share.

Both are causal decoders with rotary positions; what differs between them (norms, rotary
layout, projections, loss) stays in their own modules. What is here is only how a decoder plugs
into transformers 5: attention implementations, causal and padding masks, the KV cache for
generation, gradient checkpointing and the training flags.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.llama.modeling_llama import eager_attention_forward


class DecoderPreTrainedModel(PreTrainedModel):
    base_model_prefix = "transformer"  # as in both originals
    supports_gradient_checkpointing = True  # the layers are GradientCheckpointingLayers
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True
    # Both originals averaged the loss over each micro-batch: Trainer must not pass num_items_in_batch.
    accepts_loss_kwargs = False


def attend(module: nn.Module, query, key, value, attention_mask, past_key_values: Cache | None, **kwargs):
    """Attention of (batch, heads, seq, head_dim) tensors with the implementation in the config.

    `module` carries what transformers' attention functions read: `config`, `layer_idx`,
    `scaling`, `is_causal` and `num_key_value_groups`. Returns (batch, seq, heads * head_dim).
    """
    if past_key_values is not None:
        key, value = past_key_values.update(key, value, module.layer_idx)
    attention = ALL_ATTENTION_FUNCTIONS.get_interface(module.config._attn_implementation, eager_attention_forward)
    output, _ = attention(module, query, key, value, attention_mask, scaling=module.scaling, **kwargs)
    return output.reshape(*output.shape[:2], -1)


def run_layers(
    model: PreTrainedModel,
    layers: nn.ModuleList,
    inputs_embeds: torch.Tensor,
    rotary: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    past_key_values: Cache | None = None,
    use_cache: bool | None = None,
    cache: Cache | None = None,
    **kwargs,
) -> tuple[torch.Tensor, Cache | None]:
    """The layer stack with what it needs computed once: KV cache, positions, causal mask, rotary table.

    `rotary` maps position ids to the (cos, sin) pair the layers expect; `attention_mask` is the
    usual (batch, seq) padding mask (1 = token, 0 = padding) or None. The KV cache comes as
    `past_key_values` (transformers < 5.24) or `cache` (its name from 5.24, which `generate` uses).
    Other keyword arguments go to the attention function.
    """
    past_key_values = cache if past_key_values is None else past_key_values
    use_cache = model.config.use_cache if use_cache is None else use_cache
    if use_cache and past_key_values is None and not model.training:  # a training step never reuses keys
        past_key_values = DynamicCache(config=model.config)
    if position_ids is None:
        past_length = past_key_values.get_seq_length() if past_key_values is not None else 0
        position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device)[None] + past_length
    # The cache goes positionally: create_causal_mask's keyword for it is `cache` from transformers 5.24,
    # `past_key_values` before (deprecated from 5.24, gone in 5.40).
    causal_mask = create_causal_mask(model.config, inputs_embeds, attention_mask, past_key_values,
                                     position_ids=position_ids)
    position_embeddings = rotary(position_ids)

    hidden_states = inputs_embeds
    for layer in layers:
        # hidden_states goes positionally: GradientCheckpointingLayer checkpoints positional inputs.
        hidden_states = layer(
            hidden_states,
            position_embeddings=position_embeddings,
            attention_mask=causal_mask,
            past_key_values=past_key_values,
            **kwargs,
        )
    return hidden_states, past_key_values
