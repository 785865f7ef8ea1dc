"""Who may write a folder at a time.

A run holds its results folder, and an update run (--sftbench-update-baselines) its baselines folder, from its
first row on for as long as it runs: a second run that would write into either at the same time is refused with
one line, so that a folder never ends as a mix of two runs. The lock is a file in the folder itself (LOCK_NAME),
whatever temporary folder or shard a run has. The pytest-xdist workers of one run share it: the first to come
holds it and writes the run's id beside it (OWNER_NAME), and the others of that run find their run's id there.

A pytest-xdist worker of an update run measures only on a GPU of its own: its CUDA_VISIBLE_DEVICES names
exactly one GPU, which it locks too, host-wide (on the CPU there is no GPU to share).
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from pathlib import Path

from filelock import FileLock, Timeout

from sftbench import xdist_workers

LOCK_NAME = ".sftbench.lock"
OWNER_NAME = ".sftbench.lock.run"
OWNER_WAIT_S = 5.0  # how long a part of a run waits for the part that holds the lock to name their run
GPU_LOCKS = Path(tempfile.gettempdir())


class FolderBusy(Exception):
    """Another run holds the folder, or the GPU; the message says why and what to do."""


def hold(folder: Path, refusal: str, run: str | None = None) -> FileLock | None:
    """The lock of `folder` (made if missing), held until released; FolderBusy with `refusal` where another run
    holds it. `run`: the id the parts of one run share (pytest-xdist's testrunuid): where a part of the same run
    holds the lock, None (nothing to hold)."""
    folder.mkdir(parents=True, exist_ok=True)
    owner = folder / OWNER_NAME
    try:
        lock = _acquire(folder / LOCK_NAME, refusal)
    except FolderBusy:
        deadline = time.monotonic() + (OWNER_WAIT_S if run else 0)
        while run:  # the holder writes the run's id just after taking the lock
            if owner.exists() and owner.read_text(encoding="utf-8") == run:
                return None
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        raise
    owner.write_text(run or "", encoding="utf-8")
    return lock


def hold_worker_gpu(worker: str) -> FileLock:
    """The lock of the one GPU a pytest-xdist worker of an update run measures on."""
    visible = xdist_workers.visible_gpus()
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


def release(locks: list[FileLock | None]) -> None:
    for lock in locks:
        if lock is not None:
            lock.release()
