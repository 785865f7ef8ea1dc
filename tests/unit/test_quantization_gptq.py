"""sftbench.quantization.gptq on the CPU: synthetic GPTQ checkpoints, their sizes, the config, tiny GPTQ models.

The end-to-end tests (a tiny GPTQ model with LoRA, forward and backward on the CPU) need gptqmodel +
optimum (+ pypcre), and skip with the reason where those do not import. To run them, and the bnb one
of test_quantization_bnb.py, install those packages into a folder as docs/offline-gpu-host.md
describes (with threadpoolctl and requests), then
    PYTHONPATH=FOLDER .venv/bin/python -m pytest tests/unit/test_quantization_{gptq,bnb}.py
"""

import dataclasses
import json
import os

import pytest
import torch
from safetensors.torch import load_file

from sftbench import quantization
from sftbench.models import get_model
from sftbench.models.registry import SEED_MODEL_TYPES, meta_model
from sftbench.quantization import gptq


def read_checkpoint(path):
    index = json.loads((path / "model.safetensors.index.json").read_text())
    tensors = {}
    for file in sorted(set(index["weight_map"].values())):
        tensors.update(load_file(path / file))
    return index, tensors


# --- synthetic GPTQ checkpoints ------------------------------------------------------------------


@pytest.mark.parametrize(("model_type", "bits", "head", "block_name"), [
    ("tiny-qwen", 4, "lm_head", "transformer.h"),
    ("tiny-chatglm", 8, "transformer.output_layer", "transformer.encoder.layers"),
])
def test_checkpoint_has_the_gptq_layout(tmp_path, block_linears, model_type, bits, head, block_name):
    path = gptq.synthesize_gptq_checkpoint(get_model(model_type), bits, tmp_path)
    assert path == tmp_path / gptq.checkpoint_name(get_model(model_type), bits)
    assert path.name.startswith(f"{model_type}-gptq-int{bits}-")

    config = json.loads((path / "config.json").read_text())
    assert config["quantization_config"] == {
        "quant_method": "gptq", "bits": bits, "group_size": 64, "desc_act": False, "sym": True,
        "checkpoint_format": "gptq", "block_name_to_quantize": block_name}
    assert config["dtype"] == "float16"

    index, tensors = read_checkpoint(path)
    assert set(index["weight_map"]) == set(tensors)
    size = sum(t.numel() * t.element_size() for t in tensors.values())
    assert index["metadata"]["total_size"] == size == gptq.gptq_checkpoint_bytes(get_model(model_type), bits)

    model, linears = block_linears(model_type)
    group, per_word = 64, 32 // bits
    zero = {4: 0x77777777, 8: 0x7F7F7F7F}[bits]
    for name, linear in linears.items():
        i, o = linear.in_features, linear.out_features
        qweight, qzeros, scales, g_idx = (tensors[f"{name}.{k}"] for k in ("qweight", "qzeros", "scales", "g_idx"))
        assert qweight.dtype == torch.int32 and qweight.shape == (i * bits // 32, o)
        assert qzeros.dtype == torch.int32 and qzeros.shape == (i // group, o // per_word)
        assert (qzeros == zero).all()
        assert scales.dtype == torch.float16 and scales.shape == (i // group, o)
        assert scales.min() >= 9e-4 and scales.max() <= 1.01e-2
        assert g_idx.dtype == torch.int32 and torch.equal(g_idx, torch.arange(i, dtype=torch.int32) // group)
        assert (f"{name}.bias" in tensors) == (linear.bias is not None)
        assert f"{name}.weight" not in tensors
    assert any(linear.bias is not None for linear in linears.values())  # the fused q/k/v projections

    unquantized = {n: p for n, p in model.named_parameters() if n.rsplit(".", 1)[0] not in linears}
    assert f"{head}.weight" in unquantized
    for name, parameter in unquantized.items():
        assert tensors[name].dtype == torch.float16 and tensors[name].shape == parameter.shape
    assert set(tensors) == {f"{n}.{k}" for n, m in linears.items()
                            for k in ("qweight", "qzeros", "scales", "g_idx", *(["bias"] if m.bias is not None else []))
                            } | set(unquantized)


def test_a_second_call_returns_the_cached_checkpoint_without_writing(tmp_path, monkeypatch):
    entry = get_model("tiny-qwen")
    path = gptq.synthesize_gptq_checkpoint(entry, 4, tmp_path)
    stamps = {f.name: f.stat().st_mtime_ns for f in path.iterdir()}

    def no_writing(*args, **kwargs):
        raise AssertionError("the cached checkpoint was written again")

    monkeypatch.setattr("safetensors.torch.save_file", no_writing)
    assert gptq.synthesize_gptq_checkpoint(entry, 4, tmp_path) == path
    assert {f.name: f.stat().st_mtime_ns for f in path.iterdir()} == stamps
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary folder left


def test_an_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr("safetensors.torch.save_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        gptq.synthesize_gptq_checkpoint(get_model("tiny-qwen"), 4, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_the_cached_checkpoints_name_changes_with_what_its_bytes_depend_on(monkeypatch):
    entry = get_model("tiny-qwen")
    name = gptq.checkpoint_name(entry, 4)
    assert name.startswith("tiny-qwen-gptq-int4-") and gptq.checkpoint_name(entry, 4) == name
    wider = dataclasses.replace(entry, make_config=lambda: entry.make_config().__class__(
        **{**entry.make_config().to_dict(), "intermediate_size": 2 * entry.make_config().intermediate_size}))
    others = {gptq.checkpoint_name(entry, 8), gptq.checkpoint_name(wider, 4)}
    with monkeypatch.context() as patch:
        patch.setattr(gptq, "CHECKPOINT_FORMAT", gptq.CHECKPOINT_FORMAT + 1)
        others.add(gptq.checkpoint_name(entry, 4))
    for package in ("safetensors", "transformers"):
        with monkeypatch.context() as patch:
            patch.setattr(gptq, "installed_version", lambda name: "0.0.1" if name == package else "1.0")
            others.add(gptq.checkpoint_name(entry, 4))
    assert name not in others and len(others) == 5


def test_a_checkpoint_of_another_stack_is_not_reused(tmp_path, monkeypatch):
    entry = get_model("tiny-qwen")
    with monkeypatch.context() as patch:
        patch.setattr(gptq, "installed_version", lambda name: "0.0.1")
        stale = gptq.synthesize_gptq_checkpoint(entry, 4, tmp_path)
    fresh = gptq.synthesize_gptq_checkpoint(entry, 4, tmp_path)
    assert fresh != stale and sorted(tmp_path.iterdir()) == sorted([stale, fresh])
    key = json.loads((fresh / "sftbench-checkpoint-key.json").read_text())
    assert key == gptq.checkpoint_key(entry, 4) and key["group_size"] == 64 and key["bits"] == 4
    assert json.loads((stale / "sftbench-checkpoint-key.json").read_text())["transformers"] == "0.0.1"


def test_the_built_model_says_whether_the_cache_was_hit(tmp_path, monkeypatch):
    """build_gptq's cache decisions, with stand-ins for loading (which needs gptqmodel) and building in place."""
    monkeypatch.setattr(gptq, "load_gptq_checkpoint", lambda entry, path, bits, **kwargs: torch.nn.Linear(2, 2))
    monkeypatch.setattr(gptq, "_build_gptq_in_place", lambda *args: torch.nn.Linear(2, 2))
    entry, cpu = get_model("tiny-qwen"), torch.device("cpu")
    written = gptq.checkpoint_overhead(gptq.build_gptq(entry, 4, "sdpa", cpu, tmp_path))
    assert written["gptq_cache_hit"] == 0.0 and written["gptq_checkpoint_write_s"] > 0
    assert gptq.checkpoint_overhead(gptq.build_gptq(entry, 4, "sdpa", cpu, tmp_path)) == {
        "gptq_cache_hit": 1.0, "gptq_checkpoint_write_s": 0.0}
    monkeypatch.setattr(gptq.shutil, "disk_usage", lambda path: type("Usage", (), {"free": 0}))
    assert gptq.checkpoint_overhead(gptq.build_gptq(entry, 8, "sdpa", cpu, tmp_path)) == {"gptq_cache_hit": 0.0}
    assert quantization.checkpoint_overhead(torch.nn.Linear(2, 2)) == {}


def test_large_checkpoints_are_written_in_shards(tmp_path, monkeypatch):
    monkeypatch.setattr(gptq, "SHARD_BYTES", 20_000)
    path = gptq.synthesize_gptq_checkpoint(get_model("tiny-chatglm"), 4, tmp_path)
    index, tensors = read_checkpoint(path)
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 2
    assert files == [f"model-{i:05d}-of-{len(files):05d}.safetensors" for i in range(1, len(files) + 1)]
    assert sorted(f.name for f in path.glob("*.safetensors")) == files
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in tensors.values())


@pytest.mark.parametrize("model_type", SEED_MODEL_TYPES)
def test_seed_models_quantize_with_group_size_128(model_type):
    assert gptq.gptq_group_size(meta_model(model_type)) == 128


def test_checkpoint_sizes_of_qwen_7b():
    # 6.47e9 quantized weights at 4 bits plus two 151936 x 4096 fp16 matrices (embeddings, head): 5.86 GB.
    int4, int8 = (gptq.gptq_checkpoint_bytes(get_model("qwen-7b-chat"), bits) for bits in (4, 8))
    assert 5.8e9 < int4 < 5.9e9
    assert 9.0e9 < int8 < 9.2e9


@pytest.mark.parametrize("bits", [4, 8])
def test_gptq_config_names_a_trainable_kernel(bits):
    config = gptq.gptq_config(bits)
    assert (config.bits, config.group_size, config.desc_act, config.sym) == (bits, 128, False, True)
    assert config.format == "gptq"
    assert config.backend == "torch"


# --- end to end on the CPU, where the packages are installed --------------------------------------


@pytest.fixture
def gptqmodel():
    backend, reason = quantization.gptq_backend()
    if backend != "gptqmodel":
        pytest.skip(f"GPTQ on the CPU needs gptqmodel: {reason}")


@pytest.mark.parametrize(("model_type", "quant"), [("tiny-qwen", "int4-gptq"), ("tiny-chatglm", "int8-gptq")])
def test_gptq_model_trains_with_lora_on_the_cpu(gptqmodel, lora_step, tmp_path, monkeypatch, model_type, quant):
    monkeypatch.delenv("PYTORCH_ALLOC_CONF", raising=False)
    entry = get_model(model_type)
    model = quantization.build_quantized_model(entry, quant, device="cpu", cache_dir=tmp_path)
    assert (tmp_path / gptq.checkpoint_name(entry, quantization.GPTQ_BITS[quant])).is_dir()
    description = quantization.describe_quantized(model)
    assert description["quantization"] == quant
    assert description["backend"].startswith("gptqmodel ") and description["backend"].endswith(" / TorchLinear")
    model = lora_step(model, entry)
    assert {type(m).__name__ for m in model.modules()} >= {"GPTQLoraLinear", "TorchLinear"}
    assert {p.dtype for p in model.parameters() if not p.requires_grad and p.is_floating_point()} == {torch.float16}
    assert quantization.describe_quantized(model) == description
    assert "PYTORCH_ALLOC_CONF" not in os.environ


def test_gptq_built_in_place_equals_the_checkpoint(gptqmodel, tmp_path, monkeypatch):
    entry = get_model("tiny-llama")  # with rotary buffers, which transformers' init computes
    from_checkpoint = quantization.build_quantized_model(entry, "int4-gptq", device="cpu", cache_dir=tmp_path / "a")
    monkeypatch.setattr(gptq.shutil, "disk_usage", lambda path: type("Usage", (), {"free": 0}))
    in_place = quantization.build_quantized_model(entry, "int4-gptq", device="cpu", cache_dir=tmp_path / "b")
    assert not any((tmp_path / "b").iterdir())
    expected, actual = from_checkpoint.state_dict(), in_place.state_dict()
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[k], actual[k]) for k in expected)
    ids = torch.randint(0, 1000, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(from_checkpoint.eval()(input_ids=ids).logits, in_place.eval()(input_ids=ids).logits)
    assert quantization.describe_quantized(in_place) == quantization.describe_quantized(from_checkpoint)
