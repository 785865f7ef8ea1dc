"""Measuring: a step timer (wall time), a kernel timer (GPU kernel time) and a memory tracker.

Memory follows the seed (ms-swift's benchmark): its "GPU Memory" is torch.cuda.max_memory_reserved().
We also keep the allocator's allocated and active peaks, and the device-wide peak that NVML reports
(sampled every 10 ms in a thread; it includes the CUDA context and anything else on the GPU).

Wall time of a host-bound step is mostly Python and kernel launches and moves with the host; the
summed duration of the step's GPU kernels does not. KernelTimer reads it from CUPTI's kernel activity
records (NVIDIA's cupti-python bindings, the `gpu` extra), kernel by kernel with their names, and counts
what the host did in the step: the torch operators it dispatched and the CUDA API calls it made.
"""

from __future__ import annotations

import functools
import operator
import re
import resource
import threading
import time
from collections import Counter
from contextlib import contextmanager, nullcontext
from importlib import metadata

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from sftbench.cupti_records import BUFFER_BYTES, KernelRecordReader, loaded_libcupti
from sftbench.kernels import OTHER, classify, family_of, rules_version, short_name
from sftbench.result import Kernels, MemoryPeaks, TracedStep

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


HOST_PROBE_LAUNCHES = 1000


def host_probe_s(scratch: torch.Tensor, launches: int = HOST_PROBE_LAUNCHES) -> float:
    """Host seconds to dispatch `launches` in-place adds to a one-element tensor on the training device:
    the host's own pace at what a host-bound step is made of (Python, torch's dispatcher, a kernel launch each,
    ~5 us apiece on the GPU hosts), taken between timed steps. Wall time of host-bound steps moved by up to 33%
    between runs on one idle H100 host while their GPU time held to 0.3%; this says whether the host moved."""
    synchronize(scratch.device)
    start = time.perf_counter()
    for _ in range(launches):
        scratch.add_(1)
    elapsed = time.perf_counter() - start
    synchronize(scratch.device)
    return elapsed


def kernel_clock_unavailable(device: torch.device) -> str | None:
    """Why GPU kernel time cannot be measured on `device` (one line), or None."""
    if device.type != "cuda":
        return "no GPU kernel clock on the CPU"
    try:
        from cupti import cupti  # noqa: F401
    except Exception as error:  # noqa: BLE001 - missing or broken bindings: say which
        return f"cupti-python does not import ({type(error).__name__}: {error}): pip install 'sftbench[gpu]'"
    return None


class OperatorCounter(TorchDispatchMode):
    """Counts the torch operators dispatched while active, by name (aten::mm, flash_attn::_flash_attn_forward,
    ...: custom operators included), the backward pass's too (autograd's threads inherit the mode). Each
    operator passes through this Python method, so it is active only in the trainer's untimed counted step, and
    in every traced step, the timed ones too, under the self-test's kernel knob. `after`, where given, is called
    with each operator's name once it has run (the self-test's injected work, sftbench.injection)."""

    def __init__(self, after=None):
        super().__init__()
        self.counts: Counter[str] = Counter()
        self._after = after

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.name() if callable(getattr(func, "name", None)) else str(func)  # an OpOverload; else a HOP
        self.counts[name] += 1
        out = func(*args, **(kwargs or {}))
        if self._after is not None:
            self._after(name)
        return out


# The CUDA runtime and driver functions whose calls a traced step counts: launches, copies, fills,
# synchronizations and allocations (the host-side work between kernels); queries such as cudaGetDevice are left out.
COUNTED_API = re.compile(r"Launch|Memcpy|Memset|Synchronize|Malloc|Free|EventRecord|EventQuery|StreamWaitEvent")


class KernelTimer:
    """GPU kernel time of each step, from CUPTI's kernel activity records, with the kernels' names, the torch
    operators the step dispatched and the CUDA API calls it made.

    Kernel activity is recorded only inside `step()`, and a step's kernels are those that start between
    its synchronized start and end. Records wait in CUPTI's buffers; `collect()` flushes and sums them (read
    with numpy by sftbench.cupti_records; through cupti-python's own callback, 37-90 us a kernel, where
    libcupti is not found in the process): call it between steps, never inside a timed one. API calls are
    counted by CUPTI callbacks on the functions COUNTED_API names, enabled only inside `step()`.
    """

    def __init__(self, device: torch.device):
        from cupti import cupti

        self.device = device
        self._cupti = cupti
        self._kernel_kind = int(cupti.ActivityKind.CONCURRENT_KERNEL)
        self._windows: list[tuple[int, int, int]] = []  # (start, end, tokens) of steps not yet collected
        self._records: list[tuple[int, int, str]] = []  # (start, end, name) of kernels not yet collected
        self._clocks: list[tuple[int | None, int | None]] = []  # (SM clock, clock limits) of steps not yet collected
        self._operators: list[dict[str, int]] = []
        self._api_calls: list[dict[str, int] | None] = []
        self._clock = ClockSampler(_nvml_handle(device))
        self.after_operator = None  # called after each traced operator: the self-test's kernel spins (injection)
        self._api = ApiCounter(cupti)
        self.record = Kernels(clock=f"cupti-python {metadata.version('cupti-python')}", rules=rules_version())
        self.step_limits: list[int | None] = []  # NVML clocks-event bits seen in each collected step
        self._reader: KernelRecordReader | None = None

    @property
    def traced(self) -> int:
        """How many steps have been traced so far, collected or not: the index the next one will have."""
        return len(self.record.steps) + len(self._windows)

    def start(self) -> None:
        self._cupti.get_timestamp()  # cupti-python loads libcupti on its first call
        library = loaded_libcupti()
        if library is None:  # read record by record, slowly; the record says so
            self._cupti.activity_register_callbacks(lambda: (BUFFER_BYTES, 0), self._completed)
            self.record.clock += " (records read by its callback: no single libcupti mapped in the process)"
        else:
            self._reader = KernelRecordReader(self._cupti, library, self._kernel_kind, self._records.extend)

    def _completed(self, activities) -> None:
        self._records += [(a.start, a.end, a.name) for a in activities if a.kind == self._kernel_kind]

    @contextmanager
    def step(self, tokens: int, count_operators: bool = True, count_api_calls: bool = True):
        """Trace the kernels of this step only: CUPTI records nothing outside the timer's steps. Each count slows
        the host: the torch operators pass through a Python dispatch mode (where the self-test's injected work
        also runs, so that mode runs whenever that is set), and each CUDA API call through a Python callback. A
        step not counting them records {} operators or None API calls."""
        synchronize(self.device)
        dispatching = count_operators or self.after_operator is not None
        counter = OperatorCounter(self.after_operator) if dispatching else nullcontext()
        self._cupti.activity_enable(self._kernel_kind)
        if count_api_calls:
            self._api.begin()
        start = self._cupti.get_timestamp()
        self._clock.begin()
        try:
            with counter:
                yield
            synchronize(self.device)
        finally:
            clock = self._clock.end()
            end = self._cupti.get_timestamp()
            calls = self._api.end() if count_api_calls else None
            self._cupti.activity_disable(self._kernel_kind)
        self._windows.append((start, end, tokens))
        self._clocks.append(clock)
        self._operators.append(dict(counter.counts) if count_operators else {})
        self._api_calls.append(calls)

    def collect(self, keep: bool = True) -> list[TracedStep]:
        """Flush CUPTI's buffers and return the finished steps, added to `record` unless `keep` is False (the
        self-test's calibration steps)."""
        self._cupti.activity_flush_all(1)
        if self._reader is not None:
            self._reader.check()
        names = self.record.names if keep else list(self.record.names)  # a discarded step's names go with it
        steps = traced_steps(names, self._windows, self._records, injected=self.after_operator is not None)
        for step, (sm_mhz, limits), operators, api_calls in zip(steps, self._clocks, self._operators, self._api_calls):
            step.sm_mhz, step.operators, step.api_calls = sm_mhz, operators, api_calls
            if keep:
                self.step_limits.append(limits)
        if keep:
            self.record.steps += steps
        for pending in (self._windows, self._records, self._clocks, self._operators, self._api_calls):
            pending.clear()
        return steps

    def stop(self) -> Kernels:
        self.collect()
        self._api.close()
        self.record.clock_limits = clock_limit_counts(self.step_limits)
        return self.record


class ApiCounter:
    """Calls of the CUDA runtime and driver functions COUNTED_API names, counted by a CUPTI callback between
    begin() and end(). CUPTI allows one callback subscriber per process: where another holds it (a profiler),
    nothing is counted and end() returns None."""

    def __init__(self, cupti):
        self._cupti = cupti
        self._counts: Counter[tuple[int, int]] = Counter()
        self._names: dict[tuple[int, int], str] = {}
        self._enter = int(cupti.ApiCallbackSite.API_ENTER)
        try:
            self._subscriber = cupti.subscribe(self._called, None)
        except Exception:  # noqa: BLE001 - another subscriber: counts are missing, kernel time is not
            self._subscriber = None
            return
        for domain in (cupti.CallbackDomain.RUNTIME_API, cupti.CallbackDomain.DRIVER_API):
            for cbid, name in _callback_names(cupti, int(domain)):
                if COUNTED_API.search(name):
                    self._names[(int(domain), cbid)] = name

    def _called(self, userdata, domain, cbid, cbdata) -> None:
        if cbdata.callback_site == self._enter:
            self._counts[(domain, cbid)] += 1

    def _enable(self, enable: int) -> None:
        for domain, cbid in self._names:
            self._cupti.enable_callback(enable, self._subscriber, domain, cbid)

    def begin(self) -> None:
        self._counts.clear()
        if self._subscriber is not None:
            self._enable(1)

    def end(self) -> dict[str, int] | None:
        if self._subscriber is None:
            return None
        self._enable(0)
        calls: Counter[str] = Counter()
        for key, count in self._counts.items():
            calls[self._names[key]] += count
        return dict(sorted(calls.items()))

    def close(self) -> None:
        if self._subscriber is not None:
            self._cupti.unsubscribe(self._subscriber)
            self._subscriber = None


def _callback_names(cupti, domain: int, last: int = 2000):
    """(cbid, function name without its version suffix) of the functions of a CUPTI callback domain (CUDA 13's
    runtime and driver have fewer than `last`)."""
    for cbid in range(1, last):
        if name := _callback_name(cupti, domain, cbid):
            yield cbid, re.sub(r"_v\d+$", "", str(name))


def _callback_name(cupti, domain: int, cbid: int) -> str | None:
    try:
        return cupti.get_callback_name(domain, cbid)
    except Exception:  # noqa: BLE001 - not a function of this domain
        return None


def traced_steps(names: list[str], windows: list[tuple[int, int, int]], records: list[tuple[int, int, str]],
                 injected: bool = False) -> list[TracedStep]:
    """A TracedStep for each step's window (start, end, tokens): the kernels (start, end in ns, raw name) that start
    inside it, summed in all, by name (kernels.short_name, indexing `names`, which grows with new ones) and by
    family. With `injected` (SFTBENCH_INJECT_KERNELS), each spin kernel is named as the self-test's work in the
    family of the kernel before it (sftbench.kernels.INJECTED)."""
    records = sorted(records)
    starts = np.array([start for start, _, _ in records], dtype=np.int64)
    durations = np.array([end - start for start, end, _ in records], dtype=np.int64)
    cumulative = np.concatenate([[0], np.cumsum(durations)])
    index = {name: i for i, name in enumerate(names)}
    steps = []
    for start, end, tokens in windows:
        first, last = np.searchsorted(starts, [start, end])
        by_name: dict[int, list[int]] = {}
        family = OTHER
        for (_, _, raw), duration in zip(records[first:last], durations[first:last]):
            name = short_name(raw)
            if injected and "spin_kernel" in name:
                name = f"self-test spin ({family})"
            family = family_of(name)
            if name not in index:
                index[name] = len(names)
                names.append(name)
            entry = by_name.setdefault(index[name], [index[name], 0, 0])
            entry[1] += 1
            entry[2] += int(duration)
        step_kernels = sorted(by_name.values(), key=lambda e: -e[2])
        steps.append(TracedStep(tokens=tokens, seconds=float(cumulative[last] - cumulative[first]) / 1e9,
                                kernels=step_kernels, families=classify(names, step_kernels)))
    return steps


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


# NVML's clocks-event reasons that hold the SM clock below what the work asks for (nvmlClocksEventReason*).
CLOCK_LIMITS = {0x4: "power cap", 0x8: "hardware slowdown", 0x20: "thermal (software)", 0x40: "thermal (hardware)",
                0x80: "power brake"}


class ClockSampler:
    """The GPU's SM clock through a step and what limited it: NVML read every `interval_s` between begin()
    and end(); the clock averaged, the clocks-event reasons (CLOCK_LIMITS) of all readings combined.

    Long steps run at the power cap, below the top clock, and their kernel time differs between GPUs of one
    model by up to 3.2% while each GPU repeats itself to 0.4%; the clock reading does not account for it
    (repeats of one 8192-token step: kernel time moved 0.8% where the mean clock moved 2.5%), the limit
    reasons say when it applies. The thread samples only inside traced steps, the timed ones among them: their
    wall time includes it with CUPTI's recording (docs/measurements.md section 18)."""

    def __init__(self, handle, interval_s: float = 0.005):
        self._handle, self.interval_s = handle, interval_s
        self._active = threading.Event()
        self._samples: list[tuple[int | None, int | None]] = []
        if handle is not None:
            threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while self._active.wait():
            self._samples.append(clock_reading(self._handle))
            time.sleep(self.interval_s)

    def begin(self) -> None:
        self._samples = []
        self._active.set()

    def end(self) -> tuple[int | None, int | None]:
        """(mean SM clock, clock-limit bits) of the step's readings; one reading for a step shorter than the
        interval; None for what NVML could not read."""
        self._active.clear()
        samples = list(self._samples) or [clock_reading(self._handle)]
        clocks = [clock for clock, _ in samples if clock is not None]
        limits = [bits for _, bits in samples if bits is not None]
        return (round(sum(clocks) / len(clocks)) if clocks else None,
                functools.reduce(operator.or_, limits, 0) & sum(CLOCK_LIMITS) if limits else None)


def clock_reading(handle) -> tuple[int | None, int | None]:
    """The GPU's SM clock now and its clocks-event reasons (NVML bits), each None where unreadable."""
    try:
        import pynvml
    except ImportError:
        return None, None
    if handle is None:
        return None, None
    return (_nvml(pynvml.nvmlDeviceGetClockInfo, handle, pynvml.NVML_CLOCK_SM),
            _nvml(pynvml.nvmlDeviceGetCurrentClocksEventReasons, handle))


def _nvml(read, *args) -> int | None:
    try:
        return int(read(*args))
    except Exception:  # noqa: BLE001 - a failed reading is no reading, never a crash (it runs in a thread)
        return None


def clock_limit_names(bits: int) -> list[str]:
    """The CLOCK_LIMITS reasons among a step's clocks-event bits."""
    return [name for bit, name in CLOCK_LIMITS.items() if bits & bit]


def clock_limit_counts(limits: list[int | None]) -> dict[str, int] | None:
    """In how many of the steps each CLOCK_LIMITS reason held the clock; None where no step was read."""
    read = [bits for bits in limits if bits is not None]
    if not read:
        return None
    return dict(Counter(name for bits in read for name in clock_limit_names(bits)))


def gpu_uuid(device: torch.device) -> str | None:
    """Which physical GPU the torch device is, as NVML names it (GPU-...); None on the CPU."""
    if device.type != "cuda":
        return None
    uuid = str(torch.cuda.get_device_properties(device).uuid)
    return uuid if uuid.startswith("GPU-") else f"GPU-{uuid}"


def compute_capability(device: torch.device) -> str | None:
    """The GPU's compute capability ("9.0"); None on the CPU."""
    if device.type != "cuda":
        return None
    return "{}.{}".format(*torch.cuda.get_device_capability(device))


def _nvml_handle(device: torch.device):
    """NVML handle of the torch device, or None where nvidia-ml-py is missing or fails."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml.nvmlDeviceGetHandleByUUID(gpu_uuid(device))
    except Exception:  # noqa: BLE001 - NVML is optional; the torch peaks are the seed's metric
        return None
