"""CUPTI's kernel activity records, read from its buffers as numpy columns.

cupti-python's buffer callback builds a Python object for every record before handing the list over: about
55 us a record on an H100 host, whatever the callback then reads (docs/measurements.md section 16), so a
7B step's ~6000 kernels took a third of a second to read. Here the buffers are handed to libcupti (the
library cupti-python itself loaded) through its C callbacks, and each completed buffer is walked with
cuptiActivityGetNextRecord and read with numpy at the offsets of cupti-python's own record layout
(`activity_kernel<N>_dtype`). Every kernel record's size, as libcupti lays them out, is checked against that
layout's: a libcupti that writes another version of the record is an error, not misread times.
"""

from __future__ import annotations

import ctypes
import re
from collections.abc import Callable

import numpy as np

BUFFER_BYTES = 32 * 2**20
CUPTI_SUCCESS = 0
_REQUESTED = ctypes.CFUNCTYPE(None, ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_size_t),
                              ctypes.POINTER(ctypes.c_size_t))
_COMPLETED = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_void_p, ctypes.c_size_t,
                              ctypes.c_size_t)
Record = tuple[int, int, str]  # a kernel's (start, end) in ns and its raw name
# CUPTI keeps the callbacks registered for the rest of the process (there is no unregistering) and may complete a
# buffer as the process ends: they must outlive the reader that registered them. The buffers CUPTI holds are the
# process's too: a reader registered later (another KernelTimer) completes those handed out before it.
_REGISTERED: list = []
_BUFFERS: dict[int, np.ndarray] = {}  # address -> the array that owns it, until CUPTI completes it


def kernel_layout(cupti) -> tuple[np.dtype, str]:
    """cupti-python's newest kernel record: its numpy dtype and its name (activity_kernel10_dtype in cupti-python 13)."""
    versions = sorted(int(m[1]) for name in dir(cupti) if (m := re.fullmatch(r"activity_kernel(\d+)_dtype", name)))
    if not versions:
        raise RuntimeError("cupti-python has no activity_kernel<N>_dtype: its kernel records cannot be read")
    name = f"activity_kernel{versions[-1]}_dtype"
    return getattr(cupti, name), name


def kernel_columns(raw: np.ndarray, offsets: np.ndarray, layout: np.dtype, kind: int) -> tuple[np.ndarray, ...]:
    """(size, start, end, name pointer) of the records at `offsets` of the buffer `raw` (its valid bytes, as uint8)
    that are of `kind`, read at `layout`'s field offsets. A record's size is the distance to the next one; the last
    one's is taken to be the layout's."""

    def column(field: str, at_offsets: np.ndarray) -> np.ndarray:
        dtype, at = layout.fields[field][:2]
        gathered = raw[at_offsets[:, None] + at + np.arange(dtype.itemsize)]
        return np.ascontiguousarray(gathered).view(dtype).reshape(len(at_offsets))

    sizes = np.full(len(offsets), layout.itemsize)
    sizes[:-1] = np.diff(offsets)
    of_kind = column("kind", offsets) == kind
    offsets = offsets[of_kind]
    return sizes[of_kind], column("start", offsets), column("end", offsets), column("name", offsets)


class KernelRecordReader:
    """Hands CUPTI its activity buffers and reads each completed one into `deliver` as kernel Records. CUPTI may
    complete a buffer on its own thread: an error there is kept and raised by `check()`."""

    def __init__(self, cupti, library: ctypes.CDLL, kind: int, deliver: Callable[[list[Record]], None]):
        self._library, self._kind, self._deliver = library, kind, deliver
        self._layout, self._layout_name = kernel_layout(cupti)
        self.error: Exception | None = None
        callbacks = (_REQUESTED(self._requested), _COMPLETED(self._completed))
        _REGISTERED.append(callbacks)
        status = library.cuptiActivityRegisterCallbacks(*callbacks)
        if status != CUPTI_SUCCESS:
            raise RuntimeError(f"cuptiActivityRegisterCallbacks failed (CUptiResult {status})")

    def _requested(self, buffer, size, max_records) -> None:
        owner = np.empty(BUFFER_BYTES // 8, dtype=np.uint64)  # 8-byte aligned, as CUPTI requires
        address = owner.ctypes.data
        _BUFFERS[address] = owner
        buffer[0], size[0], max_records[0] = address, BUFFER_BYTES, 0

    def _completed(self, context, stream, buffer, size, valid) -> None:
        try:
            owner = _BUFFERS.pop(buffer)
            if valid:
                self._deliver(self._read(owner.view(np.uint8)[:valid], buffer))
        except Exception as error:  # noqa: BLE001 - raised by check(): ctypes would only print it here
            self.error = error

    def _read(self, raw: np.ndarray, address: int) -> list[Record]:
        """The kernel Records of the buffer at `address`, whose valid bytes are `raw`."""
        record, offsets = ctypes.c_void_p(None), []
        while self._library.cuptiActivityGetNextRecord(address, len(raw), ctypes.byref(record)) == CUPTI_SUCCESS:
            offsets.append(record.value - address)
        sizes, starts, ends, pointers = kernel_columns(raw, np.array(offsets, dtype=np.int64), self._layout, self._kind)
        if (sizes != self._layout.itemsize).any():
            raise RuntimeError(f"CUPTI's kernel records are {int(sizes[sizes != self._layout.itemsize][0])} bytes, "
                               f"cupti-python's {self._layout_name} {self._layout.itemsize}: this libcupti writes "
                               f"another version of the record than cupti-python reads")
        names = {int(p): ctypes.string_at(int(p)).decode() if p else "" for p in np.unique(pointers)}
        return list(zip(starts.tolist(), ends.tolist(), (names[p] for p in pointers.tolist()), strict=True))

    def check(self) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            raise RuntimeError(f"reading CUPTI's kernel records failed: {error}") from error


def loaded_libcupti() -> ctypes.CDLL | None:
    """The libcupti that cupti-python loaded into this process (it must be that one: CUPTI's state is per
    library), or None where none is mapped."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if re.search(r"/libcupti\.so[.\d]*$", line.strip())}
    except OSError:
        return None
    return declared(ctypes.CDLL(paths.pop())) if len(paths) == 1 else None


def declared(library: ctypes.CDLL) -> ctypes.CDLL:
    """`library` with the C signatures of the functions the reader calls."""
    library.cuptiActivityRegisterCallbacks.argtypes = [_REQUESTED, _COMPLETED]
    library.cuptiActivityRegisterCallbacks.restype = ctypes.c_int
    library.cuptiActivityGetNextRecord.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_void_p)]
    library.cuptiActivityGetNextRecord.restype = ctypes.c_int
    return library
