"""sftbench.trackers on the CPU: the step timer with a fake clock, the memory tracker with torch.cuda and NVML faked."""

import resource
import sys
from types import SimpleNamespace

import pytest
import torch

from sftbench import trackers
from sftbench.result import MemoryPeaks
from sftbench.trackers import MIB, MemoryTracker, StepTimer

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)


def fake_clock(monkeypatch, readings, events=None):
    """perf_counter as trackers sees it returns `readings` in turn (and notes "clock" in `events`)."""
    readings = iter(readings)

    def perf_counter():
        if events is not None:
            events.append("clock")
        return next(readings)

    monkeypatch.setattr(trackers, "time", SimpleNamespace(perf_counter=perf_counter))


def no_cuda(monkeypatch):
    """Any torch.cuda call the CPU path must not make fails the test."""
    def fail(*args, **kwargs):
        raise AssertionError("torch.cuda called on the CPU")

    for name in ("synchronize", "reset_peak_memory_stats", "memory_stats", "max_memory_reserved",
                 "max_memory_allocated"):
        monkeypatch.setattr(torch.cuda, name, fail)


def fake_cuda(monkeypatch, events):
    """torch.cuda's synchronize and allocator peaks (10 MiB reserved, 8 allocated, 9 active) without a GPU."""
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device: events.append(("synchronize", device)))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device: events.append(("reset", device)))
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda device: 10 * MIB)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: 8 * MIB)
    monkeypatch.setattr(torch.cuda, "memory_stats", lambda device: {"active_bytes.all.peak": 9 * MIB})


def fake_nvml(monkeypatch, used_bytes):
    """An NVML that reports `used_bytes` on the one device."""
    pynvml = SimpleNamespace(nvmlDeviceGetMemoryInfo=lambda handle: SimpleNamespace(used=used_bytes))
    monkeypatch.setitem(sys.modules, "pynvml", pynvml)
    monkeypatch.setattr(trackers, "_nvml_handle", lambda device: "handle")


# --- StepTimer -------------------------------------------------------------------------------------------------


def test_step_timer_records_each_steps_duration_and_tokens(monkeypatch):
    no_cuda(monkeypatch)
    fake_clock(monkeypatch, [1.0, 1.5, 2.0, 4.0])
    timer = StepTimer(CPU)
    for tokens in (100, 200):
        with timer.step(tokens):
            pass
    assert timer.durations == [0.5, 2.0]
    assert timer.tokens == [100, 200]


def test_step_timer_synchronizes_the_gpu_before_reading_the_clock(monkeypatch):
    events = []
    fake_cuda(monkeypatch, events)
    fake_clock(monkeypatch, [1.0, 3.0], events)
    timer = StepTimer(CUDA)
    with timer.step(64):
        events.append("step")
    # Queued kernels finish before the start and the end are read, so the step's own kernels are in its time.
    assert events == [("synchronize", CUDA), "clock", "step", ("synchronize", CUDA), "clock"]
    assert timer.durations == [2.0] and timer.tokens == [64]


def test_a_step_that_raises_records_nothing(monkeypatch):
    no_cuda(monkeypatch)
    timer = StepTimer(CPU)
    with pytest.raises(torch.OutOfMemoryError):
        with timer.step(100):
            raise torch.OutOfMemoryError("CUDA out of memory")
    assert timer.durations == [] and timer.tokens == []


# --- MemoryTracker ---------------------------------------------------------------------------------------------


def test_on_the_cpu_the_tracker_reports_host_memory_only(monkeypatch):
    no_cuda(monkeypatch)
    tracker = MemoryTracker(CPU)
    tracker.start()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peaks = tracker.stop()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert 0 < before <= peaks.max_rss_mib <= after  # ru_maxrss is in KiB on Linux
    assert peaks == MemoryPeaks(max_rss_mib=peaks.max_rss_mib)  # no GPU peak at all


def test_on_a_gpu_the_tracker_reports_the_allocator_and_nvml_peaks(monkeypatch):
    events = []
    fake_cuda(monkeypatch, events)
    fake_nvml(monkeypatch, used_bytes=12 * MIB)
    tracker = MemoryTracker(CUDA)
    tracker.start()
    peaks = tracker.stop()
    assert events == [("reset", CUDA)]  # the peaks are the case's, not the process's so far
    assert (peaks.max_reserved_mib, peaks.max_allocated_mib, peaks.max_active_mib) == (10.0, 8.0, 9.0)
    assert peaks.nvml_peak_mib == 12.0
    assert peaks.max_rss_mib > 0


def test_without_nvml_the_device_peak_is_none(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml fails, as without nvidia-ml-py
    assert trackers._nvml_handle(CUDA) is None
    fake_cuda(monkeypatch, [])
    tracker = MemoryTracker(CUDA)
    tracker.start()
    peaks = tracker.stop()
    assert peaks.nvml_peak_mib is None
    assert peaks.max_reserved_mib == 10.0  # the seed's metric does not need NVML


def test_stop_reads_the_peaks_after_an_exception_in_the_tracked_block(monkeypatch):
    fake_cuda(monkeypatch, [])
    fake_nvml(monkeypatch, used_bytes=12 * MIB)
    tracker = MemoryTracker(CUDA)
    with pytest.raises(torch.OutOfMemoryError):
        try:
            tracker.start()
            raise torch.OutOfMemoryError("CUDA out of memory")
        finally:
            peaks = tracker.stop()
    assert not tracker._thread.is_alive()  # the sampler stopped
    assert peaks.max_reserved_mib == 10.0 and peaks.nvml_peak_mib == 12.0
