"""sftbench.cupti_records: kernel records read from a CUPTI activity buffer with numpy. The buffer is written here
at the offsets of cupti-python 13's ActivityKernel10 (kind 0, start 16, end 24, name 104; 216 bytes), and libcupti
is faked: it hands buffers over and walks their records as cuptiActivityGetNextRecord does."""

import ctypes
import shutil
import subprocess
from types import SimpleNamespace

import numpy as np
import pytest

from sftbench import cupti_records

KERNEL, MEMCPY = 10, 1
LAYOUT = np.dtype({"names": ["kind", "start", "end", "name"], "formats": ["<i4", "<u8", "<u8", "<i8"],
                   "offsets": [0, 16, 24, 104], "itemsize": 216})
NAMES = [ctypes.create_string_buffer(b"_Z16flash_fwd_kernelILi128EEv6Params"), ctypes.create_string_buffer(b"nvjet_x")]


class FakeLibcupti:
    """libcupti's activity buffer calls: records of `record_bytes` (LAYOUT's size), laid one after another."""

    def __init__(self, status=0, record_bytes=LAYOUT.itemsize):
        self.requested = self.completed = None
        self.status, self.record_bytes = status, record_bytes

    def cuptiActivityRegisterCallbacks(self, requested, completed):
        self.requested, self.completed = requested, completed
        return self.status

    def cuptiActivityGetNextRecord(self, address, valid, record):
        previous = record._obj.value
        at = address if previous is None else previous + self.record_bytes
        if at + self.record_bytes > address + valid:
            return 12  # CUPTI_ERROR_MAX_LIMIT_REACHED
        record._obj.value = at
        return 0

    def fill(self, rows):
        """Ask for a buffer as CUPTI does, write `rows` (kind, start, end, name index) into it, complete it."""
        buffer, size, most = ctypes.c_void_p(), ctypes.c_size_t(), ctypes.c_size_t()
        self.requested(ctypes.byref(buffer), ctypes.byref(size), ctypes.byref(most))
        assert size.value == cupti_records.BUFFER_BYTES and buffer.value % 8 == 0
        for i, (kind, start, end, name) in enumerate(rows):
            [record] = np.frombuffer((ctypes.c_char * LAYOUT.itemsize).from_address(buffer.value + i * self.record_bytes),
                                     LAYOUT)
            record["kind"], record["start"], record["end"] = kind, start, end
            record["name"] = ctypes.addressof(NAMES[name]) if name is not None else 0
        self.completed(None, 0, buffer.value, size.value, len(rows) * self.record_bytes)


def reader(library, delivered):
    cupti = SimpleNamespace(activity_kernel9_dtype=None, activity_kernel10_dtype=LAYOUT)
    return cupti_records.KernelRecordReader(cupti, library, KERNEL, delivered.extend)


def test_a_completed_buffer_is_read_as_its_kernels_start_end_and_name_other_records_left_out():
    library, delivered = FakeLibcupti(), []
    read = reader(library, delivered)
    library.fill([(KERNEL, 100, 250, 0), (MEMCPY, 260, 900, 1), (KERNEL, 300, 310, 1), (KERNEL, 400, 480, 0)])
    library.fill([])  # an empty buffer: nothing delivered
    read.check()
    assert delivered == [(100, 250, "_Z16flash_fwd_kernelILi128EEv6Params"), (300, 310, "nvjet_x"),
                         (400, 480, "_Z16flash_fwd_kernelILi128EEv6Params")]
    assert not cupti_records._BUFFERS  # each buffer released once completed


def test_kernel_records_of_another_size_than_cupti_pythons_layout_are_an_error_raised_at_the_next_check():
    library, delivered = FakeLibcupti(record_bytes=LAYOUT.itemsize + 8), []  # a libcupti with a longer record
    read = reader(library, delivered)
    library.fill([(KERNEL, 100, 250, 0), (KERNEL, 300, 310, 1)])  # completed on CUPTI's thread: kept, not raised there
    assert delivered == []
    with pytest.raises(RuntimeError, match="reading CUPTI's kernel records failed: CUPTI's kernel records are 224 "
                                           "bytes, cupti-python's activity_kernel10_dtype 216"):
        read.check()
    read.check()  # raised once


def test_a_refused_registration_is_an_error():
    with pytest.raises(RuntimeError, match=r"cuptiActivityRegisterCallbacks failed \(CUptiResult 1\)"):
        reader(FakeLibcupti(status=1), [])


def test_the_newest_kernel_layout_of_cupti_python_is_used_and_none_is_an_error():
    assert cupti_records.kernel_layout(SimpleNamespace(activity_kernel9_dtype="old", activity_kernel10_dtype=LAYOUT)) == (
        LAYOUT, "activity_kernel10_dtype")
    with pytest.raises(RuntimeError, match="no activity_kernel<N>_dtype"):
        cupti_records.kernel_layout(SimpleNamespace())


def test_libcupti_is_found_only_where_the_process_has_it_mapped():
    assert cupti_records.loaded_libcupti() is None  # this test process has no CUDA


# libcupti's two activity-buffer functions in C, and a flush that writes records at LAYOUT into a buffer it requests:
# the reader's ctypes callbacks and signatures, called from C as CUPTI calls them.
FAKE_LIBCUPTI_C = r"""
#include <stdint.h>
#include <stddef.h>
#include <string.h>
typedef void (*requested_t)(uint8_t **buffer, size_t *size, size_t *max_records);
typedef void (*completed_t)(void *context, uint32_t stream, uint8_t *buffer, size_t size, size_t valid);
static requested_t requested;
static completed_t completed;
static const char *names[] = {"_Z16flash_fwd_kernelILi128EEv6Params", "nvjet_x"};
int cuptiActivityRegisterCallbacks(requested_t r, completed_t c) { requested = r; completed = c; return 0; }
int cuptiActivityGetNextRecord(uint8_t *buffer, size_t valid, void **record) {
    uint8_t *next = *record ? (uint8_t *)*record + 216 : buffer;
    if (next + 216 > buffer + valid) return 12;
    *record = next;
    return 0;
}
void flush(int n) {  /* record i: a kernel (kind 10) but the second, a copy (1); [100 i, 100 i + 50] ns */
    uint8_t *buffer; size_t size, max_records;
    requested(&buffer, &size, &max_records);
    for (int i = 0; i < n; i++) {
        uint8_t *r = buffer + 216 * i;
        int32_t kind = i == 1 ? 1 : 10;
        uint64_t start = 100 * i, end = 100 * i + 50;
        const char *name = names[i % 2];
        memset(r, 0, 216);
        memcpy(r, &kind, 4); memcpy(r + 16, &start, 8); memcpy(r + 24, &end, 8); memcpy(r + 104, &name, 8);
    }
    completed(NULL, 0, buffer, size, 216 * (size_t)n);
}
"""


def test_the_reader_takes_buffers_from_c_as_libcupti_hands_them_over(tmp_path):
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        pytest.skip("no C compiler to build the stand-in for libcupti")
    (tmp_path / "fake.c").write_text(FAKE_LIBCUPTI_C)
    subprocess.run([gcc, "-shared", "-fPIC", "-o", str(tmp_path / "libfake.so"), str(tmp_path / "fake.c")], check=True)
    library, delivered = cupti_records.declared(ctypes.CDLL(str(tmp_path / "libfake.so"))), []
    read = reader(library, delivered)
    library.flush(4)
    read.check()
    assert delivered == [(0, 50, "_Z16flash_fwd_kernelILi128EEv6Params"), (200, 250, "_Z16flash_fwd_kernelILi128EEv6Params"),
                         (300, 350, "nvjet_x")]
