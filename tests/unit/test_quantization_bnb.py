"""sftbench.quantization.bnb: swift's QLoRA config, and a tiny NF4 model trained with LoRA on the CPU.

The end-to-end test needs bitsandbytes and skips where it does not import; test_quantization_gptq.py
says how to install it here.
"""

import pytest
import torch
from torch import nn

from sftbench import quantization
from sftbench.models import get_model
from sftbench.quantization import bnb


def test_bnb_config_is_swifts_qlora():
    config = bnb.bnb_config()
    assert config.load_in_4bit and not config.load_in_8bit
    assert (config.bnb_4bit_quant_type, config.bnb_4bit_use_double_quant, config.bnb_4bit_compute_dtype) == (
        "nf4", True, torch.bfloat16)


def test_bnb_model_trains_with_lora_on_the_cpu(block_linears, lora_step):
    bitsandbytes = pytest.importorskip("bitsandbytes", reason="int4-bnb on the CPU needs bitsandbytes")
    entry = get_model("tiny-chatglm")
    model = quantization.build_quantized_model(entry, "int4-bnb", device="cpu")
    _, linears = block_linears("tiny-chatglm")
    quantized = {n for n, m in model.named_modules() if isinstance(m, bitsandbytes.nn.Linear4bit)}
    assert quantized == set(linears)
    assert type(model.transformer.output_layer) is nn.Linear  # the head is not quantized
    weight = model.transformer.encoder.layers[0].self_attention.query_key_value.weight
    assert (weight.quant_type, weight.compress_statistics, weight.bnb_quantized) == ("nf4", True, True)
    # No fp32 upcast: embeddings, norms and head stay bf16, as swift left them.
    assert {p.dtype for p in model.parameters() if p.is_floating_point()} == {torch.bfloat16}
    assert quantization.describe_quantized(model) == {
        "quantization": "int4-bnb",
        "backend": f"bitsandbytes {bitsandbytes.__version__} / Linear4bit nf4, double quant, bfloat16 compute"}
    model = lora_step(model, entry)
    assert "peft.tuners.lora.bnb" in {type(m).__module__ for m in model.modules()}
