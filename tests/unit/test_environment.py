"""The machine description: which GPU CUDA_VISIBLE_DEVICES points NVML at."""

import sys
import types

import pytest

from sftbench import environment


@pytest.fixture
def fake_nvml(monkeypatch):
    """A pynvml with two GPUs: index 0 an H100, the UUID GPU-b an H200."""
    nvml = types.SimpleNamespace(
        nvmlInit=lambda: None,
        nvmlDeviceGetHandleByIndex=lambda i: ["NVIDIA H100 80GB HBM3", "NVIDIA H200"][i],
        nvmlDeviceGetHandleByUUID=lambda uuid: {"GPU-b": "NVIDIA H200"}[uuid],
        nvmlDeviceGetName=lambda handle: handle,
        nvmlSystemGetDriverVersion=lambda: "580.159.04",
        nvmlDeviceGetMemoryInfo=lambda handle: types.SimpleNamespace(total=81559 * 2**20),
    )
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    environment.gpu_info.cache_clear()
    yield
    environment.gpu_info.cache_clear()


@pytest.mark.parametrize("visible, gpu", [(None, "NVIDIA H100 80GB HBM3"), ("1,0", "NVIDIA H200"),
                                          ("GPU-b", "NVIDIA H200"), ("", "cpu")])
def test_the_gpu_is_the_first_visible_one(fake_nvml, monkeypatch, visible, gpu):
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert environment.gpu_info()["gpu"] == gpu


def test_gpu_slug_names_the_baselines_folder():
    assert environment.gpu_slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"


def test_machine_records_the_speed_and_memory_settings_that_are_set(monkeypatch):
    for name in environment.SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CUDA_LAUNCH_BLOCKING", "1")
    monkeypatch.setenv("UNRELATED_VARIABLE", "x")
    assert environment.machine()["settings"] == {"CUDA_LAUNCH_BLOCKING": "1"}


def test_attention_kernel_is_flash_attn_or_the_chosen_fallback(monkeypatch):
    from sftbench import environment

    monkeypatch.setattr(environment, "flash_attn_installed", lambda: False)
    assert environment.attention_kernel("flash_attention_2", "sdpa") == "sdpa"
    assert environment.attention_kernel("eager") == "eager"
    with pytest.raises(environment.MissingFlashAttn, match=r"pip install 'sftbench\[flash\]', or run with --sftbench-attn-fallback sdpa"):
        environment.attention_kernel("flash_attention_2")
    monkeypatch.setattr(environment, "flash_attn_installed", lambda: True)
    assert environment.attention_kernel("flash_attention_2", "sdpa") == "flash_attention_2"


def test_the_host_is_named_by_all_its_gpus_or_else_its_hostname(monkeypatch):
    nvml = types.SimpleNamespace(nvmlInit=lambda: None, nvmlDeviceGetCount=lambda: 2,
                                 nvmlDeviceGetHandleByIndex=lambda i: i,
                                 nvmlDeviceGetUUID=lambda handle: [b"GPU-z", "GPU-a"][handle])
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")  # hides GPUs from CUDA, not from NVML: still this host
    environment.host.cache_clear()
    assert environment.host() == ["GPU-a", "GPU-z"] and environment.machine()["host"] == ["GPU-a", "GPU-z"]
    monkeypatch.setitem(sys.modules, "pynvml", None)  # no nvidia-ml-py
    monkeypatch.setattr(environment.socket, "gethostname", lambda: "ci-runner-7")
    environment.host.cache_clear()
    assert environment.host() == ["ci-runner-7"]
    environment.host.cache_clear()
