"""Measuring: a step timer (wall time), a kernel timer (GPU kernel time) and a memory tracker.

Memory follows the seed (ms-swift's benchmark): its "GPU Memory" is torch.cuda.max_memory_reserved().
We also keep the allocator's allocated and active peaks, and the device-wide peak that NVML reports
(sampled every 10 ms in a thread; it includes the CUDA context and anything else on the GPU).

Wall time of a host-bound step is mostly Python and kernel launches and moves with the host; the
summed duration of the step's GPU kernels does not. KernelTimer reads it from CUPTI's kernel activity
records (NVIDIA's cupti-python bindings, the `gpu` extra).
"""

from __future__ import annotations

import resource
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata

import numpy as np
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


@dataclass
class KernelSteps:
    """GPU kernel time of each traced step: seconds summed over its kernels, their count, its tokens."""

    seconds: list[float] = field(default_factory=list)
    kernels: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    sm_mhz: list[int | None] = field(default_factory=list)  # the GPU's mean SM clock through the step


def kernel_clock_unavailable(device: torch.device) -> str | None:
    """Why GPU kernel time cannot be measured on `device` (one line), or None."""
    if device.type != "cuda":
        return "no GPU kernel clock on the CPU"
    try:
        from cupti import cupti  # noqa: F401
    except Exception as error:  # noqa: BLE001 - missing or broken bindings: say which
        return f"cupti-python does not import ({type(error).__name__}: {error}): pip install 'sftbench[gpu]'"
    return None


class KernelTimer:
    """GPU kernel time of each step, from CUPTI's kernel activity records.

    Kernel activity is recorded only inside `step()`, and a step's kernels are those that start between
    its synchronized start and end. Records wait in CUPTI's buffers; `collect()` flushes and sums them
    (about 90 us a kernel on the H200 host, a 7B step launching ~6000): call it between steps, never
    inside a timed one.
    """

    BUFFER_BYTES = 32 * 2**20

    def __init__(self, device: torch.device):
        from cupti import cupti

        self.device = device
        self._cupti = cupti
        self._kernel_kind = int(cupti.ActivityKind.CONCURRENT_KERNEL)
        self._windows: list[tuple[int, int, int]] = []  # (start, end, tokens) of steps not yet collected
        self._records: list[tuple[int, int]] = []  # (start, end) of kernels not yet collected
        self._clocks: list[int | None] = []  # SM clock of each step not yet collected
        self._clock = ClockSampler(_nvml_handle(device))
        self.steps = KernelSteps()
        self.version = f"cupti-python {metadata.version('cupti-python')}"

    def start(self) -> None:
        self._cupti.activity_register_callbacks(lambda: (self.BUFFER_BYTES, 0), self._completed)

    def _completed(self, activities) -> None:
        self._records += [(a.start, a.end) for a in activities if a.kind == self._kernel_kind]

    @contextmanager
    def step(self, tokens: int):
        """Trace the kernels of this step only: CUPTI records nothing outside the timer's steps."""
        synchronize(self.device)
        self._cupti.activity_enable(self._kernel_kind)
        start = self._cupti.get_timestamp()
        self._clock.begin()
        try:
            yield
            synchronize(self.device)
        finally:
            clock = self._clock.end()
            end = self._cupti.get_timestamp()
            self._cupti.activity_disable(self._kernel_kind)
        self._windows.append((start, end, tokens))
        self._clocks.append(clock)

    def collect(self) -> None:
        """Flush CUPTI's buffers and add the finished steps to `steps`."""
        self._cupti.activity_flush_all(1)
        add_kernel_steps(self.steps, self._windows, self._records)
        self.steps.sm_mhz += self._clocks
        self._windows.clear()
        self._records.clear()
        self._clocks.clear()

    def stop(self) -> KernelSteps:
        self.collect()
        return self.steps


def add_kernel_steps(steps: KernelSteps, windows: list[tuple[int, int, int]], records: list[tuple[int, int]]) -> None:
    """Sum the kernels (start, end in ns) that start inside each step's window (start, end, tokens)."""
    kernels = np.array(sorted(records), dtype=np.int64).reshape(-1, 2)
    durations = np.concatenate([[0], np.cumsum(kernels[:, 1] - kernels[:, 0])])
    for start, end, tokens in windows:
        first, last = np.searchsorted(kernels[:, 0], [start, end])
        steps.seconds.append(float(durations[last] - durations[first]) / 1e9)
        steps.kernels.append(int(last - first))
        steps.tokens.append(tokens)


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


class ClockSampler:
    """The GPU's SM clock through a step: NVML read every `interval_s` between begin() and end(), averaged.

    Long steps run below the top clock, by amounts that differ between runs (the same kernels of an
    8192-token step took 1-5% longer in one run than in another). One reading per step does not show it:
    between two GPUs of one run such a step took 1.0% longer where the reading was 1.6% higher. The
    thread samples only inside traced steps, never beside a wall-timed one."""

    def __init__(self, handle, interval_s: float = 0.005):
        self._handle, self.interval_s = handle, interval_s
        self._active = threading.Event()
        self._samples: list[int] = []
        if handle is not None:
            threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while self._active.wait():
            clock = sm_clock_mhz(self._handle)
            if clock is not None:
                self._samples.append(clock)
            time.sleep(self.interval_s)

    def begin(self) -> None:
        self._samples = []
        self._active.set()

    def end(self) -> int | None:
        """The mean of the step's samples; one reading for a step shorter than the interval; None without NVML."""
        self._active.clear()
        samples = list(self._samples)
        return round(sum(samples) / len(samples)) if samples else sm_clock_mhz(self._handle)


def sm_clock_mhz(handle) -> int | None:
    """The GPU's SM clock now (NVML), or None without a handle."""
    if handle is None:
        return None
    try:
        import pynvml

        return int(pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM))
    except Exception:  # noqa: BLE001 - a failed reading is no reading, never a crash (it runs in a thread)
        return None


def _nvml_handle(device: torch.device):
    """NVML handle of the torch device, or None where nvidia-ml-py is missing or fails."""
    try:
        import pynvml

        pynvml.nvmlInit()
        uuid = str(torch.cuda.get_device_properties(device).uuid)
        return pynvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")
    except Exception:  # noqa: BLE001 - NVML is optional; the torch peaks are the seed's metric
        return None
