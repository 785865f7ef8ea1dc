"""Who may write a folder at a time.

A run holds its results folder, and an update run (--sftbench-update-baselines) its GPU's baselines folder, for
as long as it runs: a second run that would write into either at the same time is refused with one line, so
that a folder never ends as a mix of two runs. The lock is a file in the folder itself (LOCK_NAME), whatever
temporary folder, shard or pytest-xdist worker a run has; the pytest-xdist workers of one run write under the
locks their controller holds.

A pytest-xdist worker of an update run measures only on a GPU of its own: its CUDA_VISIBLE_DEVICES names
exactly one GPU, which it locks too, host-wide (on the CPU there is no GPU to share).
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

from filelock import FileLock, Timeout

from sftbench import workers

LOCK_NAME = ".sftbench.lock"
GPU_LOCKS = Path(tempfile.gettempdir())


class FolderBusy(Exception):
    """Another run holds the folder, or the GPU; the message says why and what to do."""


def hold(folder: Path, refusal: str) -> FileLock:
    """The lock of `folder` (made if missing), held until released; FolderBusy with `refusal` where another
    process holds it."""
    folder.mkdir(parents=True, exist_ok=True)
    return _acquire(folder / LOCK_NAME, refusal)


def hold_worker_gpu(worker: str) -> FileLock:
    """The lock of the one GPU a pytest-xdist worker of an update run measures on."""
    visible = workers.visible_gpus()
    if len(visible) != 1:
        raise FolderBusy(f"pytest-xdist worker {worker} sees the GPUs {','.join(visible)!r}: baselines are measured "
                         "with one GPU per worker, each its own (or without -n)")
    return _acquire(GPU_LOCKS / f"sftbench-gpu-{hashlib.sha1(visible[0].encode()).hexdigest()[:12]}.lock", (
        f"pytest-xdist worker {worker}: GPU {visible[0]} is already measured on by another worker; baselines are "
        "measured with one GPU per worker, each its own (or without -n)"))


def _acquire(path: Path, refusal: str) -> FileLock:
    lock = FileLock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise FolderBusy(refusal) from None
    return lock


def release(locks: list[FileLock]) -> None:
    for lock in locks:
        lock.release()
