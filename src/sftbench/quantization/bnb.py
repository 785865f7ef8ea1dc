"""The seed's int4 bnb rows: NF4 QLoRA (double quantization, bf16 compute) with random weights.

The seed is ms-swift's training benchmark (Dec 2023), whose tables sftbench reproduces; its
`--quantization_bit 4` loaded the bf16 checkpoint through that `BitsAndBytesConfig`. Here the model
is built on the meta device, transformers' `replace_with_bnb_linear` swaps every decoder Linear (not
the output head) for a bnb `Linear4bit`, and each weight is made on the device in bf16 and quantized
there one layer at a time, so the full bf16 model never exists.

peft's `prepare_model_for_kbit_training` is not called: swift never called it, and it upcasts the
embeddings, norms and head to fp32; they stay bf16, as in the seed. peft creates the LoRA weights
of a quantized layer in fp32, which is what swift's cast of trainable parameters gave.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .synthetic import Synthetic, materialize_unquantized

if TYPE_CHECKING:
    import torch
    from transformers import BitsAndBytesConfig, PreTrainedModel

    from sftbench.models.registry import ModelEntry


def bnb_config() -> BitsAndBytesConfig:
    """swift's `--quantization_bit 4`: NF4, double quantization, bf16 compute."""
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16)


def build_bnb(entry: ModelEntry, attn_implementation: str, device: torch.device) -> PreTrainedModel:
    """`entry`'s model in bf16 on `device`, every decoder Linear an NF4 `Linear4bit` with random weights."""
    import bitsandbytes as bnb
    import torch
    from transformers.integrations import replace_with_bnb_linear

    from sftbench.models.registry import empty_model

    config = bnb_config()
    model = empty_model(entry, "meta", dtype=torch.bfloat16, attn_implementation=attn_implementation)
    head = next(name for name, module in model.named_modules() if module is model.get_output_embeddings())
    replace_with_bnb_linear(model, modules_to_not_convert=[head], quantization_config=config)
    synthetic = Synthetic(device)
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            weight = synthetic.tiled("normal", (module.out_features, module.in_features), torch.bfloat16)
            # Params4bit.to(device) quantizes; the bf16 weight is freed before the next layer's is made.
            module.weight = bnb.nn.Params4bit(weight, requires_grad=False, **module.weight.__dict__).to(device)
            if module.bias is not None:
                module.bias = torch.nn.Parameter(torch.zeros(module.out_features, dtype=torch.bfloat16, device=device),
                                                 requires_grad=False)
            del weight
    materialize_unquantized(model, synthetic, torch.bfloat16, (bnb.nn.Linear4bit,))
    # What transformers' bnb quantizer sets; peft's dispatch wraps Linear4bit only on such a model.
    model.is_loaded_in_4bit = True
    model.config.quantization_config = config
    return model
