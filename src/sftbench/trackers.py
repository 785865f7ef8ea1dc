"""Measuring: a step timer and a memory tracker, each a start/stop object with a plain result.

Memory follows the seed: its "GPU Memory" is torch.cuda.max_memory_reserved(). We also keep the
allocator's allocated and active peaks, and the device-wide peak that NVML reports (sampled every
10 ms in a thread; it includes the CUDA context and anything else on the GPU).
"""

from __future__ import annotations

import resource
import threading
import time
from contextlib import contextmanager

import torch

from sftbench.result import MemoryPeaks

MIB = 2**20


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer:
    """Device-synchronized wall time of each step, with the tokens it processed."""

    def __init__(self, device: torch.device):
        self.device = device
        self.durations: list[float] = []
        self.tokens: list[int] = []

    @contextmanager
    def step(self, tokens: int):
        synchronize(self.device)
        start = time.perf_counter()
        yield
        synchronize(self.device)
        self.durations.append(time.perf_counter() - start)
        self.tokens.append(tokens)


class MemoryTracker:
    def __init__(self, device: torch.device, interval_s: float = 0.01):
        self.device = device
        self.interval_s = interval_s
        self._nvml_peak: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.device.type != "cuda":
            return
        torch.cuda.reset_peak_memory_stats(self.device)
        handle = _nvml_handle(self.device)
        if handle is not None:
            self._thread = threading.Thread(target=self._sample, args=(handle,), daemon=True)
            self._thread.start()

    def _sample(self, handle) -> None:
        import pynvml

        while True:
            used = pynvml.nvmlDeviceGetMemoryInfo(handle).used
            self._nvml_peak = max(self._nvml_peak or 0, used)
            if self._stop.wait(self.interval_s):
                return

    def stop(self) -> MemoryPeaks:
        """Read the peaks so far; also valid after an OOM, which is when they matter most."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        peaks = MemoryPeaks(max_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        if self.device.type == "cuda":
            stats = torch.cuda.memory_stats(self.device)
            peaks.max_reserved_mib = torch.cuda.max_memory_reserved(self.device) / MIB
            peaks.max_allocated_mib = torch.cuda.max_memory_allocated(self.device) / MIB
            peaks.max_active_mib = stats.get("active_bytes.all.peak", 0) / MIB
            peaks.nvml_peak_mib = None if self._nvml_peak is None else self._nvml_peak / MIB
        return peaks


def _nvml_handle(device: torch.device):
    """NVML handle of the torch device, or None where nvidia-ml-py is missing or fails."""
    try:
        import pynvml

        pynvml.nvmlInit()
        uuid = str(torch.cuda.get_device_properties(device).uuid)
        return pynvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")
    except Exception:  # noqa: BLE001 - NVML is optional; the torch peaks are the seed's metric
        return None
