"""Shared fixtures of the unit tests."""

import dataclasses
import tarfile

import pytest

from sftbench.result import Kernels, MemoryPeaks, Result, Timing, TracedStep
from sftbench.spec import CaseSpec

QWEN_7B_4096 = CaseSpec("qwen-7b-chat", max_length=4096)  # one row: test_lora_max_length[qwen-7b-chat-4096]
VERSIONS = {"torch": "2.11.0", "transformers": "5.17.0", "peft": "0.21.0", "flash-attn": "2.8.3", "sftbench": "0.1.0"}
TIMING = {f.name for f in dataclasses.fields(Timing)}
KERNELS = {f.name for f in dataclasses.fields(Kernels)}


def make_result(spec: CaseSpec = QWEN_7B_4096, *, gpu: str = "NVIDIA H200", minutes: float | None = 10.0,
                reserved: float | None = 1000.0, allocated: float | None = 900.0, **fields) -> Result:
    """A Result as a GPU run would record it; keyword fields override any field of the Result or of its timing
    or kernels record (by the record's own field names)."""
    timing = {"step_durations_s": [0.5, 0.25, 0.125], "step_tokens": [4096, 2048, 512], "optimizer_step_s": 0.01,
              "epoch_micro_batches": 1000, "epoch_optimizer_steps": 63, "epoch_tokens": 2_800_000,
              "epoch_seconds": None if minutes is None else minutes * 60, "minutes_per_1000_samples": minutes,
              "tokens_per_s": None if minutes is None else 2_800_000 / (minutes * 60)}
    timing.update({name: fields.pop(name) for name in TIMING & fields.keys()})
    kernels = {name: fields.pop(name) for name in KERNELS & fields.keys()}
    values = dict(
        case=spec.to_dict(), key=spec.key, outcome="ok", mode="quick", attention=spec.attention,
        timing=Timing(**timing), kernels=Kernels(**kernels), trainable_params=4_194_304,
        memory=MemoryPeaks(max_reserved_mib=reserved, max_allocated_mib=allocated, max_rss_mib=4000.0),
        overhead={"setup_s": 3.0}, versions=dict(VERSIONS),
        machine={"gpu": gpu, "driver": "580.1", "gpu_memory_mib": 143771, "cuda": "13.0", "allocator": "",
                 "host": ["GPU-host-a-0", "GPU-host-a-1"]},
    )
    values.update(fields)
    return Result(**values)


class ReplayLauncher:
    """sftbench.launcher.Launcher's stand-in: each case run hands out the next of the given results."""

    def __init__(self, *results: Result):
        self.results, self.ran = list(results), []

    def run(self, spec: CaseSpec, options) -> Result:
        self.ran.append(spec)
        return self.results.pop(0)

    def close(self) -> None:
        """Nothing to end."""


def scale_wall_time(path, factor: float) -> None:
    """A stored baseline's wall time scaled by `factor`, its timed steps' too (the paired test reads them), and its
    own spread made that of a quiet host: on a loaded machine a run's spread reached 110%, and a baseline that noisy
    judges no wall time at all."""
    import json

    data = json.loads(path.read_text())
    timing = data["result"]["timing"]
    timing["minutes_per_1000_samples"] *= factor
    timing["step_durations_s"] = [seconds * factor for seconds in timing["step_durations_s"]]
    timing["wall_noise_pct"] = 1.0
    path.write_text(json.dumps(data))


def extract(archive, into) -> None:
    """A committed run's results.tar.xz unpacked into `into`, by tarfile's data filter where there is one (Python
    3.11.4 on): a member outside the folder or a link is refused."""
    with tarfile.open(archive) as tar:
        tar.extractall(into, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))


@pytest.fixture
def unpack():
    return extract


def traced(names: list[str], steps: list[tuple[int, float | None, list[list[int]]]], **fields) -> Kernels:
    """A kernel record of traced steps given as (tokens, weight, [[name index, count, ns]]); families classified."""
    from sftbench import kernels

    return Kernels(clock="cupti-python 13.0.1", names=list(names), rules=kernels.rules_version(), steps=[
        TracedStep(tokens=tokens, seconds=sum(ns for _, _, ns in entries) / 1e9, weight=weight, kernels=entries,
                   families=kernels.classify(names, entries)) for tokens, weight, entries in steps], **fields)


@pytest.fixture
def result_factory():
    return make_result


@pytest.fixture
def kernels_factory():
    return traced


@pytest.fixture
def no_gpu(monkeypatch):
    """For pytest runs started by a test: they see no GPU even on a GPU machine (the GPU slug is "cpu")."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    # Under `make test ARGS="-n 2"` these tests run in a pytest-xdist worker, whose variables would tell the runs
    # they start that they are workers too (pytest-benchmark then disables itself: no --benchmark-json).
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def store(tmp_path):
    """A baselines folder of the test's own."""
    from sftbench.storage.baselines import BaselineStore

    return BaselineStore(tmp_path / "baselines")


@pytest.fixture
def written(store, result_factory):
    """The path of a baseline of QWEN_7B_4096 measured on an H200, written to the store."""
    from sftbench.catalog import rows_of

    return store.write(result_factory(QWEN_7B_4096), rows_of(QWEN_7B_4096), {"commit": "abc1234", "mode": "quick"})


@pytest.fixture
def rules_file(tmp_path, monkeypatch):
    """A kernel_families.toml for the test to write, read instead of sftbench's (the rules and each kernel's
    family are cached: cleared before and after)."""
    from sftbench import kernels

    path = tmp_path / "kernel_families.toml"
    monkeypatch.setattr(kernels, "RULES", path)
    for cached in (kernels.rules, kernels.rules_version, kernels.family_of):
        cached.cache_clear()
    yield path
    for cached in (kernels.rules, kernels.rules_version, kernels.family_of):
        cached.cache_clear()


@pytest.fixture
def block_linears():
    """model_type -> (its meta model, {name: Linear} of the decoder layers: the layers a quantization replaces)."""
    from torch import nn

    from sftbench.models import get_model
    from sftbench.models.registry import meta_model

    def linears(model_type):
        model = meta_model(model_type)
        blocks = {"qwen": "transformer.h.", "chatglm": "transformer.encoder.layers."}[get_model(model_type).family]
        return model, {name: m for name, m in model.named_modules() if type(m) is nn.Linear and name.startswith(blocks)}

    return linears


@pytest.fixture
def lora_step():
    """(quantized model, entry) -> the peft model after one LoRA forward and backward on the CPU, checked finite."""
    import torch

    def step(model, entry):
        import peft

        model.config.use_cache = False
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
        model = peft.get_peft_model(model, peft.LoraConfig(r=8, lora_alpha=32, lora_dropout=0.05,
                                                           task_type="CAUSAL_LM", target_modules=list(entry.lora_all)))
        model.train()
        ids = torch.randint(0, 1000, (2, 48), generator=torch.Generator().manual_seed(0))
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        trainable = [p for p in model.parameters() if p.requires_grad]
        assert torch.isfinite(loss)
        assert trainable and all(p.grad is not None and torch.isfinite(p.grad).all() for p in trainable)
        assert {p.dtype for p in trainable} == {torch.float32}  # peft's LoRA on quantized layers, as swift's cast
        return model

    return step
