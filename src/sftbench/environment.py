"""The stack a result was measured on: package versions, GPU, driver, CUDA, allocator settings.

Read without importing the packages (importlib.metadata) and without creating a CUDA context (NVML),
so the pytest process can describe the machine cheaply.
"""

from __future__ import annotations

import importlib.util
import os
import re
import socket
import subprocess
from functools import cache
from importlib import metadata
from pathlib import Path

from sftbench.faults import FAULT
from sftbench.injection import KNOBS

PACKAGES = ("torch", "transformers", "peft", "accelerate", "flash-attn", "bitsandbytes", "gptqmodel", "optimum",
            "auto-gptq", "triton", "nvidia-ml-py", "sftbench")


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


@cache
def gpu_info() -> dict[str, str | int | None]:
    """Name, driver and memory of GPU 0 from NVML; the name is 'cpu' where there is none."""
    info: dict[str, str | int | None] = {"gpu": "cpu", "driver": None, "gpu_memory_mib": None, "cuda": None}
    try:
        import torch

        info["cuda"] = torch.version.cuda
    except ImportError:
        pass
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and not visible.strip():
        return info  # every GPU hidden: a CPU run
    first = (visible or "0").split(",")[0].strip()
    try:
        import pynvml

        pynvml.nvmlInit()
        # CUDA_VISIBLE_DEVICES holds indices, or GPU-/MIG- UUIDs.
        handle = (pynvml.nvmlDeviceGetHandleByIndex(int(first)) if first.isdigit()
                  else pynvml.nvmlDeviceGetHandleByUUID(first))
        name = pynvml.nvmlDeviceGetName(handle)
        info["gpu"] = name.decode() if isinstance(name, bytes) else name
        driver = pynvml.nvmlSystemGetDriverVersion()
        info["driver"] = driver.decode() if isinstance(driver, bytes) else driver
        info["gpu_memory_mib"] = pynvml.nvmlDeviceGetMemoryInfo(handle).total // 2**20
    except Exception:  # noqa: BLE001 - no NVML or no GPU: ask torch instead
        info["gpu"] = _torch_gpu_name() or "cpu"
    return info


def _torch_gpu_name() -> str | None:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        return None


FLASH_EXTRA = "flash-attn is not installed: pip install 'sftbench[flash]'"
FALLBACK_OPTION = "--sftbench-attn-fallback"  # pytest's option that runs flash rows with another kernel


class MissingFlashAttn(ImportError):
    """A flash_attention_2 case where flash-attn is not installed and no fallback kernel was chosen."""


def flash_attn_installed() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def attention_kernel(requested: str, fallback: str | None = None, fallback_option: str | None = FALLBACK_OPTION) -> str:
    """The attention kernel a case runs here: the requested one, or `fallback` where flash-attn is missing.

    Without flash-attn transformers would try to fetch a flash kernel from the hub instead of failing.
    MissingFlashAttn names the extra to install, and `fallback_option` where the command has such an option.
    """
    if requested == "flash_attention_2" and not flash_attn_installed():
        if fallback is None:
            raise MissingFlashAttn(FLASH_EXTRA + (f", or run with {fallback_option} sdpa" if fallback_option else ""))
        return fallback
    return requested


def gpu_slug(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3': the baselines folder of that GPU model."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def allocator_config() -> str:
    return os.environ.get("PYTORCH_CUDA_ALLOC_CONF") or os.environ.get("PYTORCH_ALLOC_CONF") or ""


def git_commit(root: Path | None = None) -> str | None:
    """The checkout's commit; SFTBENCH_COMMIT names it where the tree is a copy without .git."""
    if os.environ.get("SFTBENCH_COMMIT"):
        return os.environ["SFTBENCH_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        return None


# Environment variables that change a case's speed or memory without any package changing (the self-test
# knobs and the fault injection among them); a baseline records those that are set, and a comparison names
# those that differ.
SETTINGS = ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF", "PYTORCH_NO_CUDA_MEMORY_CACHING", "CUDA_LAUNCH_BLOCKING",
            "NVIDIA_TF32_OVERRIDE", "CUBLAS_WORKSPACE_CONFIG", "CUDA_MODULE_LOADING", "OMP_NUM_THREADS",
            "TORCH_NCCL_AVOID_RECORD_STREAMS", *KNOBS, FAULT)


def settings() -> dict[str, str]:
    return {name: os.environ[name] for name in SETTINGS if name in os.environ}


@cache
def host() -> list[str]:
    """What identifies this host: the UUIDs of all the GPUs NVML lists (CUDA_VISIBLE_DEVICES does not hide
    them from NVML), else its hostname. Two results come from the same host where these share an entry;
    wall time is compared only between such results (baselines.compare)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        uuids = [pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(index))
                 for index in range(pynvml.nvmlDeviceGetCount())]
        uuids = [uuid.decode() if isinstance(uuid, bytes) else uuid for uuid in uuids]
    except Exception:  # noqa: BLE001 - no NVML or no GPU: the hostname names the host
        uuids = []
    return sorted(uuids) or [socket.gethostname()]


def machine() -> dict:
    return {**gpu_info(), "host": host(), "allocator": allocator_config(), "settings": settings()}
