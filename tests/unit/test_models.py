"""The model zoo: exact shapes of the seed models, and working tiny models of every family (CPU)."""

import importlib.util
import json
import warnings

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from transformers.modeling_layers import GradientCheckpointingLayer

from sftbench.models import (
    MODELS,
    SEED_MODEL_TYPES,
    UnknownModelType,
    build_model,
    count_lora_trainable,
    count_parameters,
    enable_activation_checkpointing,
    get_model,
    lora_target_modules,
    models_summary,
)
from sftbench.models.chatglm import apply_interleaved_rotary
from sftbench.models.qwen import apply_rotary

TINY_TYPES = ["tiny-qwen", "tiny-chatglm", "tiny-llama", "tiny-mistral"]
CUSTOM_TINY_TYPES = ["tiny-qwen", "tiny-chatglm"]  # our own code, not transformers'

# Parameter counts of the original checkpoints (from their config.json shapes; Yi-34B and the OpenBuddy
# Mistral models counted from their config.json shapes: vocab 64000 / 36608).
ORIGINAL_TOTAL_PARAMS = {
    "qwen-1_8b-chat": 1_836_828_672,
    "qwen-7b-chat": 7_721_324_544,
    "qwen-14b-chat": 14_167_290_880,
    "qwen-72b-chat": 72_287_920_128,
    "chatglm2-6b": 6_243_584_000,
    "chatglm3-6b": 6_243_584_000,
    "yi-6b-chat": 6_061_035_520,
    "yi-34b-chat": 34_388_917_248,
    "openbuddy-mistral-7b-chat": 7_279_480_832,
    "openbuddy-zephyr-7b-chat": 7_279_480_832,
}

# LoRA trainable counts: qwen-7b-chat's are the seed table's (1.05M / 4.19M / 33.55M / 17.89M);
# the others are r * (in + out) summed by hand over the targeted Linears.
LORA_TRAINABLE = [
    ("qwen-7b-chat", 2, "DEFAULT", 1_048_576),
    ("qwen-7b-chat", 8, "DEFAULT", 4_194_304),
    ("qwen-7b-chat", 64, "DEFAULT", 33_554_432),
    ("qwen-7b-chat", 8, "ALL", 17_891_328),
    ("chatglm3-6b", 8, "DEFAULT", 28 * 8 * (4096 + 4096 + 2 * 2 * 128)),
    ("yi-6b-chat", 8, "DEFAULT", 32 * 8 * ((4096 + 4096) + 2 * (4096 + 512))),
    ("openbuddy-mistral-7b-chat", 8, "DEFAULT", 32 * 8 * ((4096 + 4096) + 2 * (4096 + 1024))),
]


def test_seed_model_types_are_the_seed_tables():
    assert set(SEED_MODEL_TYPES) == set(ORIGINAL_TOTAL_PARAMS)


@pytest.mark.parametrize("model_type", list(ORIGINAL_TOTAL_PARAMS))
def test_total_parameters_equal_the_original_checkpoint(model_type):
    assert count_parameters(model_type) == ORIGINAL_TOTAL_PARAMS[model_type]
    assert get_model(model_type).total_params == ORIGINAL_TOTAL_PARAMS[model_type]


@pytest.mark.parametrize(("model_type", "rank", "targets", "expected"), LORA_TRAINABLE)
def test_lora_trainable_parameters(model_type, rank, targets, expected):
    assert count_lora_trainable(model_type, rank, targets) == expected


def test_models_summary_lists_every_seed_model():
    summary = models_summary([(8, "DEFAULT")])
    assert set(summary) == set(SEED_MODEL_TYPES)
    expected_qwen_7b = {"total_params": 7_721_324_544, "trainable_params": {"lora-r8-DEFAULT": 4_194_304}}
    assert summary["qwen-7b-chat"] == expected_qwen_7b
    for model_type, row in summary.items():
        assert row["total_params"] == ORIGINAL_TOTAL_PARAMS[model_type]
        assert row["trainable_params"]["lora-r8-DEFAULT"] > 0


@pytest.mark.parametrize("model_type", ["qwen-7b-chat", "chatglm3-6b", "yi-6b-chat", "openbuddy-mistral-7b-chat"])
def test_lora_all_targets_every_linear_except_the_output_head(model_type):
    model = build_model(model_type, device="meta")
    head = model.get_output_embeddings()
    linear_names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and module is not head
    }
    assert linear_names == set(get_model(model_type).lora_all)
    assert set(lora_target_modules(model_type, "DEFAULT")) <= linear_names


def test_lora_targets_other_than_default_or_all_are_refused():
    with pytest.raises(ValueError, match="DEFAULT"):
        lora_target_modules("qwen-7b-chat", "all-linear")


def test_unknown_model_type_lists_the_known_ones():
    with pytest.raises(UnknownModelType) as error:
        get_model("qwen-8b-chat")
    assert isinstance(error.value, ValueError)
    assert "qwen-7b-chat" in str(error.value) and "tiny-chatglm" in str(error.value)


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is not None, reason="flash-attn is installed")
def test_flash_attention_without_flash_attn_names_the_extra():
    with pytest.raises(ImportError, match=r"pip install 'sftbench\[flash\]'"):
        build_model("tiny-qwen", attn_implementation="flash_attention_2")


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_build_model_creates_tensors_on_the_device_in_the_dtype(attn_implementation):
    # On "meta" a 7B model costs no memory: nothing may be created on the CPU first.
    model = build_model("qwen-7b-chat", attn_implementation=attn_implementation, device="meta")
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.config._attn_implementation == attn_implementation


def padded_batch(vocab_size=1000):
    """Two samples, the second right-padded from 8 to 12 tokens, as swift's collator pads."""
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, vocab_size, (2, 12), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 8:] = 0
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    return input_ids, attention_mask, labels


def tiny(model_type, attn_implementation="sdpa", dtype=torch.float32):
    torch.manual_seed(0)
    return build_model(model_type, attn_implementation=attn_implementation, dtype=dtype)


@pytest.mark.parametrize("model_type", TINY_TYPES)
def test_eager_and_sdpa_agree_with_and_without_padding(model_type):
    input_ids, attention_mask, labels = padded_batch()
    results = {}
    for attn_implementation in ["eager", "sdpa"]:
        model = tiny(model_type, attn_implementation)
        padded = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        padded.loss.backward()
        unpadded = model(input_ids=input_ids[1:, :8])
        results[attn_implementation] = padded, unpadded
        # Padding changes nothing for the real tokens of the padded sample.
        torch.testing.assert_close(padded.logits[1, :8], unpadded.logits[0], rtol=1e-5, atol=1e-5)
        assert all(p.grad is not None for p in model.parameters())
    (eager, eager_alone), (sdpa, sdpa_alone) = results["eager"], results["sdpa"]
    real_tokens = attention_mask.bool()
    torch.testing.assert_close(eager.logits[real_tokens], sdpa.logits[real_tokens], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(eager_alone.logits, sdpa_alone.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(eager.loss, sdpa.loss)


@pytest.mark.parametrize("model_type", CUSTOM_TINY_TYPES)
def test_loss_is_shifted_cross_entropy_ignoring_minus_100(model_type):
    input_ids, attention_mask, labels = padded_batch()
    output = tiny(model_type)(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    logits, targets = output.logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten()
    kept = targets != -100
    expected = torch.nn.functional.cross_entropy(logits[kept], targets[kept])
    torch.testing.assert_close(output.loss, expected)


@pytest.mark.parametrize(("model_type", "logits_upcast"), [("tiny-qwen", False), ("tiny-chatglm", True)])
def test_loss_dtype_follows_the_original(model_type, logits_upcast, monkeypatch):
    # Qwen v1 took the loss on bf16 logits; ChatGLM2/3 upcast the logits to fp32 first.
    seen = []
    cross_entropy = torch.nn.functional.cross_entropy

    def recording_cross_entropy(logits, *args, **kwargs):
        seen.append(logits.dtype)
        return cross_entropy(logits, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", recording_cross_entropy)
    input_ids, attention_mask, labels = padded_batch()
    output = tiny(model_type, dtype=torch.bfloat16)(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    assert seen == [torch.float32 if logits_upcast else torch.bfloat16]
    assert output.logits.dtype == output.loss.dtype == torch.bfloat16


@pytest.mark.parametrize("model_type", TINY_TYPES)
def test_gradient_checkpointing_recomputes_each_layer_through_no_deprecated_transformers_api(model_type):
    input_ids, attention_mask, labels = padded_batch()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for checkpointing, expected_calls in [(False, 1), (True, 2)]:
            model = tiny(model_type)
            if checkpointing:
                enable_activation_checkpointing(model)
            first_layer = next(m for m in model.modules() if isinstance(m, GradientCheckpointingLayer))
            calls = []
            # Counted on a module inside the layer, which every transformers release replays: from 5.23 the
            # layer checkpoints its class's own forward, so a patched forward or a hook on the layer is not rerun.
            first_layer.mlp.register_forward_pre_hook(lambda module, args: calls.append(1))
            loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
            assert len(calls) == 1
            loss.backward()
            assert len(calls) == expected_calls
    # The checkpointing switch and the causal mask (the rebuilt decoders') under their current names: on the
    # newest transformers (the nightly newest-releases job) their old names warn.
    assert [str(w.message) for w in caught if issubclass(w.category, (DeprecationWarning, FutureWarning))] == []


@pytest.mark.parametrize("model_type", TINY_TYPES)
@pytest.mark.parametrize("targets", ["DEFAULT", "ALL"])
def test_lora_training_step_as_swift_sets_it_up(model_type, targets):
    model = tiny(model_type)
    enable_activation_checkpointing(model)
    model.enable_input_require_grads()
    lora = LoraConfig(r=4, lora_alpha=32, lora_dropout=0.05, target_modules=lora_target_modules(model_type, targets))
    model = get_peft_model(model, lora)
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    assert sum(p.numel() for p in trainable.values()) == count_lora_trainable(model_type, 4, targets) > 0

    input_ids, attention_mask, labels = padded_batch()
    model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss.backward()
    # lora_B starts at zero, so only B gets a non-zero gradient on the first step.
    assert all(p.grad is not None for p in trainable.values())
    assert all(p.grad.abs().sum() > 0 for name, p in trainable.items() if "lora_B" in name)


def rotate_as_complex(pairs_real, pairs_imag, angles):
    rotated = torch.complex(pairs_real, pairs_imag) * torch.polar(torch.ones_like(angles), angles)
    return rotated.real, rotated.imag


def test_qwen_rotary_rotates_the_two_halves_of_each_head():
    x = torch.randn(1, 2, 5, 8)  # (batch, heads, seq, head_dim)
    angles = torch.rand(1, 5, 4) * 6
    cos, sin = torch.cat((angles, angles), -1).cos(), torch.cat((angles, angles), -1).sin()
    out = apply_rotary(x, cos, sin)
    real, imag = rotate_as_complex(x[..., :4], x[..., 4:], angles[:, None])
    torch.testing.assert_close(out, torch.cat((real, imag), -1))


def test_chatglm_rotary_rotates_adjacent_pairs_of_the_first_half():
    x = torch.randn(1, 2, 5, 16)
    angles = torch.rand(1, 5, 4) * 6  # 4 pairs: the first 8 of 16 dims
    out = apply_interleaved_rotary(x, angles.cos(), angles.sin())
    real, imag = rotate_as_complex(x[..., 0:8:2], x[..., 1:8:2], angles[:, None])
    torch.testing.assert_close(out[..., :8], torch.stack((real, imag), -1).flatten(-2))
    torch.testing.assert_close(out[..., 8:], x[..., 8:])


@pytest.mark.parametrize("model_type", CUSTOM_TINY_TYPES)
def test_generation_with_kv_cache_matches_full_forwards(model_type):
    model = tiny(model_type).eval()
    prompt = torch.randint(0, 1000, (1, 5), generator=torch.Generator().manual_seed(2))
    generated = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=4, do_sample=False)
    expected = prompt
    for _ in range(4):
        next_token = model(expected, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
        expected = torch.cat((expected, next_token), dim=1)
    assert torch.equal(generated, expected)


def original_qwen_checkpoint(config):
    """Tensor names and shapes as in Qwen/Qwen-*-Chat's model.safetensors."""
    hidden, inner = config.hidden_size, config.intermediate_size // 2
    qkv = 3 * config.kv_channels * config.num_attention_heads
    shapes = {
        "transformer.wte.weight": (config.vocab_size, hidden),
        "transformer.ln_f.weight": (hidden,),
        "lm_head.weight": (config.vocab_size, hidden),
    }
    for i in range(config.num_hidden_layers):
        layer = f"transformer.h.{i}."
        shapes |= {
            layer + "ln_1.weight": (hidden,),
            layer + "attn.c_attn.weight": (qkv, hidden),
            layer + "attn.c_attn.bias": (qkv,),
            layer + "attn.c_proj.weight": (hidden, hidden),
            layer + "ln_2.weight": (hidden,),
            layer + "mlp.w1.weight": (inner, hidden),
            layer + "mlp.w2.weight": (inner, hidden),
            layer + "mlp.c_proj.weight": (hidden, inner),
        }
    return shapes


def original_chatglm_checkpoint(config):
    """Tensor names and shapes as in THUDM/chatglm3-6b's checkpoint, rotary buffer included."""
    hidden, ffn, head = config.hidden_size, config.ffn_hidden_size, config.kv_channels
    qkv = config.num_attention_heads * head + 2 * config.multi_query_group_num * head
    shapes = {
        "transformer.embedding.word_embeddings.weight": (config.padded_vocab_size, hidden),
        "transformer.rotary_pos_emb.inv_freq": (head // 4,),
        "transformer.encoder.final_layernorm.weight": (hidden,),
        "transformer.output_layer.weight": (config.padded_vocab_size, hidden),
    }
    for i in range(config.num_layers):
        layer = f"transformer.encoder.layers.{i}."
        shapes |= {
            layer + "input_layernorm.weight": (hidden,),
            layer + "self_attention.query_key_value.weight": (qkv, hidden),
            layer + "self_attention.query_key_value.bias": (qkv,),
            layer + "self_attention.dense.weight": (hidden, config.num_attention_heads * head),
            layer + "post_attention_layernorm.weight": (hidden,),
            layer + "mlp.dense_h_to_4h.weight": (2 * ffn, hidden),
            layer + "mlp.dense_4h_to_h.weight": (hidden, ffn),
        }
    return shapes


def random_tensors(shapes):
    generator = torch.Generator().manual_seed(3)
    return {name: torch.randn(shape, generator=generator) for name, shape in shapes.items()}


def write_checkpoint(folder, config, tensors, file_format="safetensors", shards=1):
    """A checkpoint folder as published: config.json plus one file or shards with an index."""
    (folder / "config.json").write_text(config.to_json_string())
    names = sorted(tensors)
    stem, suffix = ("model", "safetensors") if file_format == "safetensors" else ("pytorch_model", "bin")
    files = [f"{stem}-{i + 1:05d}-of-{shards:05d}.{suffix}" for i in range(shards)]
    if shards == 1:
        files = [f"{stem}.{suffix}"]
    weight_map = {name: files[i * len(files) // len(names)] for i, name in enumerate(names)}
    for file in files:
        shard = {name: tensors[name] for name in names if weight_map[name] == file}
        if file_format == "safetensors":
            save_file(shard, folder / file)
        else:
            torch.save(shard, folder / file)
    if shards > 1:
        (folder / f"{stem}.{suffix}.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


@pytest.mark.parametrize(
    ("model_type", "original_checkpoint", "file_format", "shards"),
    [
        ("tiny-qwen", original_qwen_checkpoint, "safetensors", 1),
        ("tiny-qwen", original_qwen_checkpoint, "safetensors", 3),
        ("tiny-chatglm", original_chatglm_checkpoint, "safetensors", 2),  # with rotary_pos_emb.inv_freq
        ("tiny-chatglm", original_chatglm_checkpoint, "bin", 2),  # ChatGLM2 shipped .bin shards
    ],
)
def test_original_checkpoint_loads_exactly(tmp_path, model_type, original_checkpoint, file_format, shards):
    config = get_model(model_type).make_config()
    tensors = random_tensors(original_checkpoint(config))
    write_checkpoint(tmp_path, config, tensors, file_format, shards)

    model = build_model(model_type, dtype=torch.float32, weights_path=str(tmp_path))

    state = model.state_dict()
    assert set(state) == set(tensors) - {"transformer.rotary_pos_emb.inv_freq"}
    for name, tensor in state.items():
        assert torch.equal(tensor, tensors[name]), name


def test_native_llama_checkpoint_loads_through_the_same_path(tmp_path):
    reference = tiny("tiny-llama")
    tensors = {name: t + 1 for name, t in reference.state_dict().items()}
    write_checkpoint(tmp_path, reference.config, tensors)
    model = build_model("tiny-llama", dtype=torch.float32, weights_path=str(tmp_path))
    assert all(torch.equal(t, tensors[name]) for name, t in model.state_dict().items())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.pop("transformer.ln_f.weight"), "missing"),
        (lambda t: t.update({"transformer.h.0.attn.bias": torch.zeros(1)}), "unexpected"),
        (lambda t: t.update({"lm_head.weight": torch.zeros(7, 64)}), "shape"),
    ],
)
def test_checkpoint_that_does_not_match_is_refused(tmp_path, change, message):
    config = get_model("tiny-qwen").make_config()
    tensors = random_tensors(original_qwen_checkpoint(config))
    change(tensors)
    write_checkpoint(tmp_path, config, tensors)
    with pytest.raises(ValueError, match=message):
        build_model("tiny-qwen", weights_path=str(tmp_path))


def test_folder_without_checkpoint_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        build_model("tiny-qwen", weights_path=str(tmp_path))


def test_every_entry_names_its_source():
    for model_type, entry in MODELS.items():
        assert entry.model_type == model_type
        assert entry.family in {"qwen", "chatglm", "llama", "mistral"}
        assert entry.source
