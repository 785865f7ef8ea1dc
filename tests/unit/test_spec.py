"""sftbench.spec: CaseSpec's validation, key, gradient accumulation and replace."""

import dataclasses

import pytest

from sftbench.spec import CaseSpec, InvalidSpec

DEFAULT_7B = CaseSpec("qwen-7b-chat")


def test_the_spec_key_names_every_setting_that_differs():
    assert DEFAULT_7B.key == "qwen-7b-chat.lora.bf16.len2048.bs1.gc.flash_attention_2.r8-DEFAULT"
    assert CaseSpec("qwen-7b-chat", sft_type="full", max_length=512).key == \
        "qwen-7b-chat.full.bf16.len512.bs1.gc.flash_attention_2"
    assert CaseSpec("tiny-qwen", device="cpu", attention="sdpa", samples=10).key.endswith(".n10.cpu")


def test_the_key_marks_no_checkpointing_and_a_checkpoint_folder():
    spec = DEFAULT_7B.replace(gradient_checkpointing=False, weights_path="/models/qwen-7b-chat")
    assert spec.key == "qwen-7b-chat.lora.bf16.len2048.bs1.nogc.flash_attention_2.r8-DEFAULT.weights"


@pytest.mark.parametrize("changes, message", [
    ({"sft_type": "full", "quantization": "int4-bnb"}, "full fine-tuning of a int4-bnb model is impossible"),
    ({"quantization": "int3"}, "unknown quantization 'int3'"),
    ({"attention": "xformers"}, "unknown attention"),
    ({"batch_size": 0}, "batch_size must be >= 1"),
    ({"lora_rank": 0}, "LoRA needs lora_rank >= 1"),
    ({"device": "cpu"}, "need a CUDA GPU"),
])
def test_impossible_combinations_are_one_clear_error(changes, message):
    with pytest.raises(InvalidSpec, match=message):
        DEFAULT_7B.replace(**changes)


@pytest.mark.parametrize("changes, message", [
    ({"sft_type": "qlora"}, "unknown sft_type 'qlora'; choose one of lora, full"),
    ({"lora_targets": "attn"}, "unknown lora_targets 'attn'; choose one of DEFAULT, ALL"),
    ({"device": "tpu"}, "unknown device 'tpu'"),
    ({"truncation": "right"}, "unknown truncation 'right'"),
    ({"max_length": 0}, "max_length must be >= 1, got 0"),
    ({"samples": 0}, "samples must be >= 1, got 0"),
    ({"quantization": "int4-gptq", "weights_path": "/models/q"}, "a checkpoint folder \\(weights_path\\) is for bf16"),
    ({"device": "cpu", "attention": "sdpa", "quantization": "int8-gptq"}, "int8-gptq / sdpa need a CUDA GPU"),
    ({"max_length": "long"}, "max_length must be a whole number, got 'long'"),
    ({"lora_rank": True}, "lora_rank must be a whole number, got True"),
    ({"samples": 6.0}, "samples must be a whole number, got 6.0"),
    ({"gradient_checkpointing": 1}, "gradient_checkpointing must be true or false, got 1"),
])
def test_unknown_values_and_impossible_inputs_name_the_setting(changes, message):
    with pytest.raises(InvalidSpec, match=message) as error:
        DEFAULT_7B.replace(**changes)
    assert isinstance(error.value, ValueError)


def test_full_fine_tuning_ignores_the_lora_rank():
    assert DEFAULT_7B.replace(sft_type="full", lora_rank=0).key == DEFAULT_7B.replace(sft_type="full").key


def test_gradient_accumulation_as_swift():
    assert [DEFAULT_7B.replace(batch_size=b).gradient_accumulation_steps for b in (1, 2, 4, 8, 3)] == [16, 8, 4, 2, 6]


def test_replace_returns_a_new_spec_and_leaves_the_original():
    changed = DEFAULT_7B.replace(lora_rank=64, batch_size=2)
    assert (changed.lora_rank, changed.batch_size, changed.model_type) == (64, 2, "qwen-7b-chat")
    assert (DEFAULT_7B.lora_rank, DEFAULT_7B.batch_size) == (8, 1)
    assert changed != DEFAULT_7B and DEFAULT_7B.replace() == DEFAULT_7B
    with pytest.raises(dataclasses.FrozenInstanceError):
        changed.lora_rank = 8
