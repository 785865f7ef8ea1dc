"""sftbench.trackers on the CPU: the step timer with a fake clock, the memory tracker with torch.cuda and NVML faked."""

import resource
import sys
import threading
import time
from types import SimpleNamespace
from typing import ClassVar

import pytest
import torch

from sftbench import kernels, trackers
from sftbench.result import MemoryPeaks
from sftbench.trackers import (
    HOST_PROBE_LAUNCHES,
    MIB,
    MemoryTracker,
    StepTimer,
    host_probe_s,
)

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
    with pytest.raises(torch.OutOfMemoryError), timer.step(100):
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


# --- KernelTimer: CUPTI faked, kernels as (start, end) in ns ---------------------------------------------------


class FakeCupti:
    """cupti.cupti as KernelTimer uses it: a clock, enable/disable, buffers handed over on flush, and API callbacks
    (two runtime functions: cudaLaunchKernel, counted, and cudaGetDevice, not)."""

    class ActivityKind:
        CONCURRENT_KERNEL = 10

    class ApiCallbackSite:
        API_ENTER, API_EXIT = 0, 1

    class CallbackDomain:
        RUNTIME_API, DRIVER_API = 3, 2

    API: ClassVar = {(3, 1): "cudaLaunchKernel_v7000", (3, 2): "cudaGetDevice_v3020", (3, 3): "cudaMemcpyAsync_v3020"}

    def __init__(self, kernels_per_step, names=("_Z16flash_fwd_kernelILi128EEv6Params", "nvjet_tst_128x256")):
        self.kernels_per_step, self.names, self.now, self.enabled, self.buffer = kernels_per_step, names, 0, False, []
        self.completed, self.callback, self.callbacks_on, self.subscribed = None, None, set(), False

    def activity_register_callbacks(self, requested, completed):
        self.completed = completed

    def activity_enable(self, kind):
        self.enabled = True

    def activity_disable(self, kind):
        self.enabled = False

    def get_timestamp(self):
        return self.now

    def subscribe(self, callback, userdata):
        self.callback, self.subscribed = callback, True
        return "subscriber"

    def unsubscribe(self, subscriber):
        self.subscribed = False

    def get_callback_name(self, domain, cbid):
        if (domain, cbid) not in self.API:
            raise RuntimeError("CUPTI_ERROR_INVALID_PARAMETER")
        return self.API[(domain, cbid)]

    def enable_callback(self, enable, subscriber, domain, cbid):
        (self.callbacks_on.add if enable else self.callbacks_on.discard)((domain, cbid))

    def api(self, cbid):
        """A runtime API call: both callback sites, where CUPTI calls back for it."""
        if (3, cbid) in self.callbacks_on:
            for site in (0, 1):
                self.callback(None, 3, cbid, SimpleNamespace(callback_site=site))

    def launch(self):
        """One step's kernels: each 1000 ns long, 500 ns apart, named in turn; recorded only while enabled."""
        for i in range(self.kernels_per_step):
            self.api(1)
            self.api(2)
            if self.enabled:
                self.buffer.append(SimpleNamespace(kind=10, start=self.now, end=self.now + 1000,
                                                   name=self.names[i % len(self.names)]))
            self.now += 1500
        self.api(3)
        self.buffer.append(SimpleNamespace(kind=99, start=self.now, end=self.now + 10**9, name="memcpy"))  # not a kernel
        self.now += 10

    def activity_flush_all(self, flag):
        self.completed(self.buffer)
        self.buffer = []


@pytest.fixture
def cupti(monkeypatch):
    cupti = FakeCupti(kernels_per_step=3)
    monkeypatch.setitem(sys.modules, "cupti", SimpleNamespace(cupti=cupti))
    monkeypatch.setattr(trackers.metadata, "version", lambda name: "13.0.1")
    return cupti


def test_kernel_timer_sums_each_steps_kernels_and_records_nothing_between_steps(cupti, monkeypatch):
    clocks = iter([(1980, 0), (1755, 0x4), (1980, None)])
    monkeypatch.setattr(trackers, "clock_reading", lambda handle: next(clocks))
    timer = trackers.KernelTimer(CPU)
    timer.start()
    cupti.launch()  # an untraced step: a wall-timed one
    for tokens in (2048, 512):
        with timer.step(tokens):
            cupti.launch()
    timer.collect()
    with timer.step(0):
        cupti.launch()
    record = timer.stop()
    steps = record.steps
    assert [s.tokens for s in steps] == [2048, 512, 0] and [sum(n for _, n, _ in s.kernels) for s in steps] == [3] * 3
    assert [s.seconds for s in steps] == pytest.approx([3e-6] * 3)
    assert [s.sm_mhz for s in steps] == [1980, 1755, 1980]  # read as each step's kernels ran, in step order
    assert timer.step_limits == [0, 0x4, None] and record.clock_limits == {"power cap": 1}
    assert record.clock == ("cupti-python 13.0.1 (records read by its callback: no single libcupti mapped in the "
                            "process)") and not cupti.enabled  # no libcupti here: cupti-python's callback read them


def test_each_traced_step_records_its_kernels_by_demangled_name_operators_and_api_calls(cupti):
    timer = trackers.KernelTimer(CPU)
    timer.start()
    cupti.launch()  # untraced: no API calls counted, no operators
    with timer.step(2048):
        torch.ones(3).mul(2).sum()
        cupti.launch()
    record = timer.stop()
    [step] = record.steps
    assert record.names == ["flash_fwd_kernel<128>", "nvjet_tst_128x256"]  # demangled, without the parameters
    assert step.kernels == [[0, 2, 2000], [1, 1, 1000]]  # [name index, count, ns], longest first
    assert step.families == {"attention forward": 2e-6, "GEMM": 1e-6} and record.rules == kernels.rules_version()
    assert step.operators == {"aten::ones": 1, "aten::mul.Tensor": 1, "aten::sum": 1}
    assert step.api_calls == {"cudaLaunchKernel": 3, "cudaMemcpyAsync": 1}  # entries counted, queries not
    assert not cupti.callbacks_on and not cupti.subscribed  # callbacks only inside steps; released at the end


def test_a_step_traced_without_counting_records_its_kernels_and_no_counts(cupti):
    timer = trackers.KernelTimer(CPU)
    timer.start()
    with timer.step(2048, count_operators=False, count_api_calls=False):
        torch.ones(3).mul(2)
        cupti.launch()
    assert not cupti.callbacks_on  # no API callback was enabled for it
    with timer.step(1024, count_api_calls=False):  # operators only
        torch.ones(3).mul(2)
        cupti.launch()
    spun = []
    timer.after_operator = spun.append  # the self-test's injected work runs after each operator all the same
    with timer.step(512, count_operators=False, count_api_calls=False):
        torch.ones(3).mul(2)
        cupti.launch()
    steps = timer.stop().steps
    assert [sum(n for _, n, _ in s.kernels) for s in steps] == [3, 3, 3] and steps[0].seconds == pytest.approx(3e-6)
    assert [(s.operators, s.api_calls) for s in steps] == [({}, None), ({"aten::ones": 1, "aten::mul.Tensor": 1}, None),
                                                         ({}, None)]
    assert spun == ["aten::ones", "aten::mul.Tensor"]


def test_api_calls_are_not_counted_where_another_profiler_holds_cuptis_callbacks(cupti):
    def taken(callback, userdata):
        raise RuntimeError("CUPTI_ERROR_MULTIPLE_SUBSCRIBERS_NOT_SUPPORTED")

    cupti.subscribe = taken
    timer = trackers.KernelTimer(CPU)
    timer.start()
    with timer.step(512):
        cupti.launch()
    [step] = timer.stop().steps
    assert step.api_calls is None and step.seconds > 0


def test_kernels_are_assigned_by_their_start_inside_a_window():
    names = []
    steps = trackers.traced_steps(names, [(100, 200, 7), (200, 300, 8)],
                                  [(250, 290, "b"), (100, 150, "a"), (199, 260, "a"), (300, 310, "c")])
    assert [s.tokens for s in steps] == [7, 8]
    assert [s.seconds for s in steps] == pytest.approx([(50 + 61) / 1e9, 40 / 1e9])
    assert names == ["a", "b"] and [s.kernels for s in steps] == [[[0, 2, 111]], [[1, 1, 40]]]


def test_an_injected_spin_is_named_as_self_test_work_of_the_family_before_it():
    spin = "_ZN2at4cuda12_GLOBAL__N_111spin_kernelEl"
    records = [(0, 10, "flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel"), (10, 12, spin), (20, 30, "nvjet_x"),
               (30, 31, spin)]
    names, plain = [], []
    [step] = trackers.traced_steps(names, [(0, 100, 64)], records, injected=True)
    assert names[1] == "self-test spin (attention backward)" and names[3] == "self-test spin (GEMM)"
    assert step.families == pytest.approx({"attention backward": 12e-9, "GEMM": 11e-9})  # spins in their families
    trackers.traced_steps(plain, [(0, 100, 64)], records)
    assert plain[1] == "at::cuda::(anonymous namespace)::spin_kernel"  # SFTBENCH_INJECT_GPU_PCT's: other


def test_the_cpu_has_no_kernel_clock_and_no_gpu_uuid(monkeypatch):
    assert trackers.kernel_clock_unavailable(CPU) == "no GPU kernel clock on the CPU"
    assert trackers.gpu_uuid(CPU) is None
    properties = SimpleNamespace(uuid="8e2a5f01-0000-4000-8000-000000000000")  # torch's form, without NVML's GPU-
    monkeypatch.setattr(trackers.torch.cuda, "get_device_properties", lambda device: properties)
    assert trackers.gpu_uuid(trackers.torch.device("cuda", 0)) == "GPU-8e2a5f01-0000-4000-8000-000000000000"


def test_the_sm_clock_and_its_limits_are_read_from_nvml_and_none_without_it(monkeypatch):
    def clock(handle, which):
        if handle == "lost":
            raise RuntimeError("GPU is lost")
        return {"SM": 1980}[which]

    def reasons(handle):
        if handle == "old driver":
            raise RuntimeError("Not Supported")
        return 0x4 | 0x1  # power cap, and idle

    monkeypatch.setitem(sys.modules, "pynvml", SimpleNamespace(
        nvmlDeviceGetClockInfo=clock, NVML_CLOCK_SM="SM", nvmlDeviceGetCurrentClocksEventReasons=reasons))
    assert trackers.clock_reading("handle") == (1980, 0x5)
    assert trackers.clock_reading("old driver") == (1980, None)
    assert trackers.clock_reading(None) == (None, None) and trackers.clock_reading("lost")[0] is None


def test_the_clock_sampler_averages_the_clock_and_combines_its_limits_inside_a_step_only(monkeypatch):
    readings = []

    def reading(handle):
        readings.append(handle)
        return (1800, 0x4 | 0x1) if len(readings) % 2 else (1900, 0x20)

    monkeypatch.setattr(trackers, "clock_reading", reading)
    sampler = trackers.ClockSampler("handle", interval_s=0.001)
    time.sleep(0.05)
    assert readings == []  # nothing between steps
    sampler.begin()
    time.sleep(0.1)
    mean, limits = sampler.end()
    assert len(readings) >= 4 and 1800 <= mean <= 1900
    assert limits == 0x4 | 0x20  # idle (0x1) is no limit
    taken = len(readings)
    time.sleep(0.05)
    assert len(readings) <= taken + 1  # at most the reading under way as the step ended
    sampler.begin()
    assert sampler.end() in ((1800, 0x4), (1900, 0x20))  # a step too short for a sample: one reading


def test_without_nvml_the_clock_sampler_starts_no_thread_and_reads_none():
    before = threading.active_count()
    sampler = trackers.ClockSampler(None)
    sampler.begin()
    assert sampler.end() == (None, None) and threading.active_count() == before


def test_clock_limits_are_counted_by_name_over_the_steps_read():
    assert trackers.clock_limit_counts([0x4, 0x4 | 0x40, 0, None]) == {"power cap": 2, "thermal (hardware)": 1}
    assert trackers.clock_limit_counts([0, 0]) == {}  # read, never limited
    assert trackers.clock_limit_counts([None]) is None and trackers.clock_limit_counts([]) is None


def test_the_host_probe_times_a_fixed_burst_of_launches_on_the_device():
    scratch = torch.zeros(1)
    assert host_probe_s(scratch) > 0 and scratch.item() == HOST_PROBE_LAUNCHES


def test_a_compiled_function_reaches_the_operator_counter_op_by_op_as_eager_code():
    # Why the trainer runs compiled code eagerly in every step (sftbench.trainer.Trainer.run): under the traced steps'
    # dispatch mode a compiled graph does not run.
    ran = []

    def backend(graph, inputs):
        def compiled(*args):
            ran.append(1)
            return graph.forward(*args)
        return compiled

    dequantize = torch.compile(lambda x, s: ((x >> 4) & 15).to(torch.float16) * s, backend=backend)
    x, s = torch.randint(0, 2**30, (8, 8), dtype=torch.int32), torch.rand(8, 8).half()
    dequantize(x, s)
    assert ran == [1]
    with trackers.OperatorCounter() as counter:
        dequantize(x, s)
    assert ran == [1] and counter.counts == {"aten::__rshift__.Scalar": 1, "aten::bitwise_and.Scalar": 1,
                                              "aten::_to_copy": 1, "aten::mul.Tensor": 1}
