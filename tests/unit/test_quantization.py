"""sftbench.quantization on the CPU: synthetic GPTQ checkpoints, backend detection, messages, configs.

The end-to-end tests (a tiny GPTQ or bnb model with LoRA, forward and backward on the CPU) need
gptqmodel + optimum (+ pypcre) or bitsandbytes, and skip with the reason where those do not import.
To run them on a CPU machine, install those packages into /tmp/cpu-site as docs/offline-gpu-host.md
describes (`--target /tmp/cpu-site`, with threadpoolctl and requests), then
    PYTHONPATH=/tmp/cpu-site .venv/bin/python -m pytest tests/unit/test_quantization.py
"""

import importlib.abc
import importlib.util
import json
import os
import subprocess
import sys
from importlib import metadata

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from sftbench import quantization
from sftbench.models import build_model, get_model
from sftbench.models.registry import SEED_MODEL_TYPES, meta_model


@pytest.fixture(autouse=True)
def fresh_backend_detection():
    quantization.gptq_backend.cache_clear()
    yield
    quantization.gptq_backend.cache_clear()


def read_checkpoint(path):
    index = json.loads((path / "model.safetensors.index.json").read_text())
    tensors = {}
    for file in sorted(set(index["weight_map"].values())):
        tensors.update(load_file(path / file))
    return index, tensors


def block_linears(model_type):
    model = meta_model(model_type)
    blocks = {"qwen": "transformer.h.", "chatglm": "transformer.encoder.layers."}[get_model(model_type).family]
    return model, {name: m for name, m in model.named_modules() if type(m) is nn.Linear and name.startswith(blocks)}


# --- synthetic GPTQ checkpoints ------------------------------------------------------------------


@pytest.mark.parametrize(("model_type", "bits", "head", "block_name"), [
    ("tiny-qwen", 4, "lm_head", "transformer.h"),
    ("tiny-chatglm", 8, "transformer.output_layer", "transformer.encoder.layers"),
])
def test_checkpoint_has_the_gptq_layout(tmp_path, model_type, bits, head, block_name):
    path = quantization.synthesize_gptq_checkpoint(get_model(model_type), bits, tmp_path)
    assert path == tmp_path / f"{model_type}-gptq-int{bits}"

    config = json.loads((path / "config.json").read_text())
    assert config["quantization_config"] == {
        "quant_method": "gptq", "bits": bits, "group_size": 64, "desc_act": False, "sym": True,
        "checkpoint_format": "gptq", "block_name_to_quantize": block_name}
    assert config["dtype"] == "float16"

    index, tensors = read_checkpoint(path)
    assert set(index["weight_map"]) == set(tensors)
    size = sum(t.numel() * t.element_size() for t in tensors.values())
    assert index["metadata"]["total_size"] == size == quantization.gptq_checkpoint_bytes(get_model(model_type), bits)

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
    path = quantization.synthesize_gptq_checkpoint(entry, 4, tmp_path)
    stamps = {f.name: f.stat().st_mtime_ns for f in path.iterdir()}

    def no_writing(*args, **kwargs):
        raise AssertionError("the cached checkpoint was written again")

    monkeypatch.setattr("safetensors.torch.save_file", no_writing)
    assert quantization.synthesize_gptq_checkpoint(entry, 4, tmp_path) == path
    assert {f.name: f.stat().st_mtime_ns for f in path.iterdir()} == stamps
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary folder left


def test_an_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr("safetensors.torch.save_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        quantization.synthesize_gptq_checkpoint(get_model("tiny-qwen"), 4, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_large_checkpoints_are_written_in_shards(tmp_path, monkeypatch):
    monkeypatch.setattr(quantization, "SHARD_BYTES", 20_000)
    path = quantization.synthesize_gptq_checkpoint(get_model("tiny-chatglm"), 4, tmp_path)
    index, tensors = read_checkpoint(path)
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 2
    assert files == [f"model-{i:05d}-of-{len(files):05d}.safetensors" for i in range(1, len(files) + 1)]
    assert sorted(f.name for f in path.glob("*.safetensors")) == files
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in tensors.values())


@pytest.mark.parametrize("model_type", SEED_MODEL_TYPES)
def test_seed_models_quantize_with_group_size_128(model_type):
    assert quantization.gptq_group_size(meta_model(model_type)) == 128


def test_checkpoint_sizes_of_qwen_7b():
    # 6.47e9 quantized weights at 4 bits plus two 151936 x 4096 fp16 matrices (embeddings, head): 5.86 GB.
    int4, int8 = (quantization.gptq_checkpoint_bytes(get_model("qwen-7b-chat"), bits) for bits in (4, 8))
    assert 5.8e9 < int4 < 5.9e9
    assert 9.0e9 < int8 < 9.2e9


# --- backend detection and messages ---------------------------------------------------------------


class FakeImports(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Makes `import name` run `effect` (a callable, e.g. one that raises) for the given module names."""

    def __init__(self, effects):
        self.effects = effects

    def find_spec(self, name, path=None, target=None):
        if name in self.effects:
            return importlib.util.spec_from_loader(name, self, is_package=True)
        return None

    def exec_module(self, module):
        self.effects[module.__name__]()


def simulate(monkeypatch, versions, imports=None):
    """Installed distributions `versions` ({name: version}); `imports` {module: effect} for those importing."""
    real_version = metadata.version

    def version(name):
        if name in versions:
            if versions[name] is None:
                raise metadata.PackageNotFoundError(name)
            return versions[name]
        return real_version(name)

    monkeypatch.setattr(metadata, "version", version)
    imports = imports or {}
    for name in ("auto_gptq", "gptqmodel", "optimum", "optimum.gptq", "bitsandbytes"):
        monkeypatch.setitem(sys.modules, name, None)  # "import name" raises ModuleNotFoundError
        if name in imports:
            monkeypatch.delitem(sys.modules, name)  # imported through FakeImports, undone after the test
    monkeypatch.setattr(sys, "meta_path", [FakeImports(imports), *sys.meta_path])


def ok():
    pass


NONE_INSTALLED = {"auto-gptq": None, "gptqmodel": None, "optimum": None, "transformers": "5.17.0"}
GPTQMODEL = {"gptqmodel": ok, "optimum": ok, "optimum.gptq": ok}


def test_nothing_installed(monkeypatch):
    simulate(monkeypatch, NONE_INSTALLED)
    assert quantization.gptq_backend() == (None, "gptqmodel is not installed")
    with pytest.raises(quantization.MissingExtra) as error:
        quantization.require("int4-gptq")
    assert str(error.value) == ("int4-gptq needs gptqmodel >= 7.0 and optimum (gptqmodel is not installed): "
                                "pip install 'sftbench[gptq]'")


def test_auto_gptq_that_does_not_import_is_reported_and_gptqmodel_used(monkeypatch):
    def broken():
        raise RuntimeError("QuantLinear needs transformers.pytorch_utils.Conv1D")

    simulate(monkeypatch, {**NONE_INSTALLED, "auto-gptq": "0.7.1", "gptqmodel": "7.6.0", "optimum": "2.3.0"},
             {"auto_gptq": broken, **GPTQMODEL})
    assert quantization.gptq_backend() == (
        "gptqmodel",
        "auto-gptq 0.7.1 is installed but does not import on transformers 5.17.0 (RuntimeError: QuantLinear needs "
        "transformers.pytorch_utils.Conv1D); using gptqmodel 7.6.0 with optimum 2.3.0")
    quantization.require("int8-gptq")


def test_auto_gptq_alone_that_does_not_import_is_missing(monkeypatch):
    simulate(monkeypatch, {**NONE_INSTALLED, "auto-gptq": "0.5.1"})  # importing auto_gptq raises ModuleNotFoundError
    assert quantization.gptq_backend() == (
        None, "auto-gptq 0.5.1 is installed but does not import on transformers 5.17.0 (ModuleNotFoundError: import "
              "of auto_gptq halted; None in sys.modules); gptqmodel is not installed")


def test_auto_gptq_is_not_used_on_transformers_5_even_if_it_imports(monkeypatch):
    simulate(monkeypatch, {**NONE_INSTALLED, "auto-gptq": "0.7.1", "gptqmodel": "7.6.0", "optimum": "2.3.0"},
             {"auto_gptq": ok, **GPTQMODEL})
    assert quantization.gptq_backend() == (
        "gptqmodel", "auto-gptq 0.7.1 imports but does not support transformers 5.17.0 (it needs < 5); "
                     "using gptqmodel 7.6.0 with optimum 2.3.0")


def test_auto_gptq_on_transformers_4(monkeypatch):
    simulate(monkeypatch, {**NONE_INSTALLED, "auto-gptq": "0.5.1", "transformers": "4.36.2"}, {"auto_gptq": ok})
    assert quantization.gptq_backend() == ("auto-gptq", "auto-gptq 0.5.1 on transformers 4.36.2")


@pytest.mark.parametrize(("versions", "imports", "reason"), [
    ({"gptqmodel": "6.0.3", "optimum": "2.3.0"}, GPTQMODEL, "gptqmodel 6.0.3 is too old (needs >= 7.0)"),
    ({"gptqmodel": "7.6.0"}, GPTQMODEL, "gptqmodel 7.6.0 is installed but optimum is not"),
])
def test_unusable_gptqmodel(monkeypatch, versions, imports, reason):
    simulate(monkeypatch, {**NONE_INSTALLED, **versions}, imports)
    assert quantization.gptq_backend() == (None, reason)


def test_gptqmodel_that_does_not_import_names_the_error(monkeypatch):
    def no_pcre():
        raise ModuleNotFoundError("No module named 'pcre'")

    simulate(monkeypatch, {**NONE_INSTALLED, "gptqmodel": "7.6.0", "optimum": "2.3.0"},
             {**GPTQMODEL, "gptqmodel": no_pcre})
    with pytest.raises(quantization.MissingExtra) as error:
        quantization.require("int4-gptq")
    assert str(error.value) == (
        "int4-gptq needs gptqmodel >= 7.0 and optimum (gptqmodel 7.6.0 with optimum 2.3.0 does not import "
        "(ModuleNotFoundError: No module named 'pcre')): pip install 'sftbench[gptq]'")


def test_importing_gptqmodel_keeps_the_environment_and_prints_nothing(monkeypatch, capsys):
    def like_gptqmodel():
        # What gptqmodel 7.6 does on import when these are unset.
        os.environ["PYTORCH_ALLOC_CONF"] = "expandable_segments:True,max_split_size_mb:256"
        os.environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        print("GPT-QModel banner")

    monkeypatch.delenv("PYTORCH_ALLOC_CONF", raising=False)
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "FASTEST_FIRST")
    simulate(monkeypatch, {**NONE_INSTALLED, "gptqmodel": "7.6.0", "optimum": "2.3.0"},
             {**GPTQMODEL, "gptqmodel": like_gptqmodel})
    assert quantization.gptq_backend()[0] == "gptqmodel"
    assert "PYTORCH_ALLOC_CONF" not in os.environ
    assert os.environ["CUDA_DEVICE_ORDER"] == "FASTEST_FIRST"
    assert capsys.readouterr().out == ""


def test_bnb_needs_bitsandbytes(monkeypatch):
    simulate(monkeypatch, NONE_INSTALLED)
    with pytest.raises(quantization.MissingExtra, match=r"^int4-bnb needs bitsandbytes, which is not installed: "
                                                        r"pip install 'sftbench\[gpu\]'$"):
        quantization.require("int4-bnb")
    simulate(monkeypatch, NONE_INSTALLED, {"bitsandbytes": ok})
    quantization.require("int4-bnb")


def test_unknown_quantization_lists_the_valid_ones():
    with pytest.raises(ValueError) as error:
        quantization.require("int3-awq")
    assert str(error.value) == "unknown quantization 'int3-awq'; valid: bf16, int4-gptq, int8-gptq, int4-bnb"
    quantization.require("bf16")


def test_importing_the_module_imports_no_heavy_package():
    heavy = "{'torch', 'transformers', 'gptqmodel', 'bitsandbytes'}"
    code = f"import sys, sftbench.quantization; print(sorted({heavy} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"


# --- configs and description ----------------------------------------------------------------------


def test_bnb_config_is_swifts_qlora():
    config = quantization.bnb_config()
    assert config.load_in_4bit and not config.load_in_8bit
    assert (config.bnb_4bit_quant_type, config.bnb_4bit_use_double_quant, config.bnb_4bit_compute_dtype) == (
        "nf4", True, torch.bfloat16)


@pytest.mark.parametrize("bits", [4, 8])
def test_gptq_config_names_a_trainable_kernel(bits):
    config = quantization.gptq_config(bits)
    assert (config.bits, config.group_size, config.desc_act, config.sym) == (bits, 128, False, True)
    assert config.format == "gptq"
    assert config.backend == "torch"


def test_a_bf16_model_is_described_as_such():
    assert quantization.describe_quantized(build_model("tiny-qwen")) == {"quantization": "bf16", "backend": None}


def test_bf16_is_not_built_here():
    with pytest.raises(ValueError, match="not quantized"):
        quantization.build_quantized_model(get_model("tiny-qwen"), "bf16", device="cpu")


# --- end to end on the CPU, where the packages are installed --------------------------------------


@pytest.fixture
def gptqmodel():
    backend, reason = quantization.gptq_backend()
    if backend != "gptqmodel":
        pytest.skip(f"GPTQ on the CPU needs gptqmodel: {reason}")


def lora_step(model, entry):
    import peft

    model.config.use_cache = False
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    model = peft.get_peft_model(model, peft.LoraConfig(r=8, lora_alpha=32, lora_dropout=0.05, task_type="CAUSAL_LM",
                                                       target_modules=list(entry.lora_all)))
    model.train()
    ids = torch.randint(0, 1000, (2, 48), generator=torch.Generator().manual_seed(0))
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert torch.isfinite(loss)
    assert trainable and all(p.grad is not None and torch.isfinite(p.grad).all() for p in trainable)
    assert {p.dtype for p in trainable} == {torch.float32}  # peft's LoRA on quantized layers, as swift's cast
    return model


@pytest.mark.parametrize(("model_type", "quant"), [("tiny-qwen", "int4-gptq"), ("tiny-chatglm", "int8-gptq")])
def test_gptq_model_trains_with_lora_on_the_cpu(gptqmodel, tmp_path, monkeypatch, model_type, quant):
    monkeypatch.delenv("PYTORCH_ALLOC_CONF", raising=False)
    entry = get_model(model_type)
    model = quantization.build_quantized_model(entry, quant, device="cpu", cache_dir=tmp_path)
    assert (tmp_path / f"{model_type}-gptq-{quant.split('-')[0]}").is_dir()
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
    monkeypatch.setattr(quantization.shutil, "disk_usage", lambda path: type("Usage", (), {"free": 0}))
    in_place = quantization.build_quantized_model(entry, "int4-gptq", device="cpu", cache_dir=tmp_path / "b")
    assert not any((tmp_path / "b").iterdir())
    expected, actual = from_checkpoint.state_dict(), in_place.state_dict()
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[k], actual[k]) for k in expected)
    ids = torch.randint(0, 1000, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(from_checkpoint.eval()(input_ids=ids).logits, in_place.eval()(input_ids=ids).logits)
    assert quantization.describe_quantized(in_place) == quantization.describe_quantized(from_checkpoint)


def test_bnb_model_trains_with_lora_on_the_cpu():
    bnb = pytest.importorskip("bitsandbytes", reason="int4-bnb on the CPU needs bitsandbytes")
    entry = get_model("tiny-chatglm")
    model = quantization.build_quantized_model(entry, "int4-bnb", device="cpu")
    _, linears = block_linears("tiny-chatglm")
    quantized = {n for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    assert quantized == set(linears)
    assert type(model.transformer.output_layer) is nn.Linear  # the head is not quantized
    weight = model.transformer.encoder.layers[0].self_attention.query_key_value.weight
    assert (weight.quant_type, weight.compress_statistics, weight.bnb_quantized) == ("nf4", True, True)
    # No fp32 upcast: embeddings, norms and head stay bf16, as swift left them.
    assert {p.dtype for p in model.parameters() if p.is_floating_point()} == {torch.bfloat16}
    assert quantization.describe_quantized(model) == {
        "quantization": "int4-bnb",
        "backend": f"bitsandbytes {bnb.__version__} / Linear4bit nf4, double quant, bfloat16 compute"}
    model = lora_step(model, entry)
    assert "peft.tuners.lora.bnb" in {type(m).__module__ for m in model.modules()}
