"""Who may write baselines at a time (--sftbench-update-baselines).

Two update runs writing one GPU's baselines folder would leave a set mixing both, so an update run
holds a lock on it (filelock, in the system's temporary folder) for as long as it runs; another one is
refused with one line. The parts of one run may share the folder: each --sftbench-shard part and each
pytest-xdist worker locks its own part (two runs with the same parts still exclude each other).
An xdist worker measures only on a GPU of its own: its CUDA_VISIBLE_DEVICES names exactly one GPU, which
it locks too (on the CPU there is no GPU to share).
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

from filelock import FileLock, Timeout

from sftbench import workers

LOCKS = Path(tempfile.gettempdir())


class UpdateRefused(Exception):
    """This run may not write baselines now; the message says why and what to do."""


def lock_update(folder: Path, part: str, worker: str | None, gpu: str) -> list[FileLock]:
    """The locks this update run holds while it writes baselines into `folder` (release them at its end)."""
    held = [_acquire(f"update-{_digest(folder.resolve())}-{_digest(part)}-{worker or 'main'}", (
        f"another --sftbench-update-baselines run is writing {folder}: wait for it to finish (two runs would "
        "leave a set of baselines mixing both)"))]
    if worker is not None and gpu != "cpu":
        visible = workers.visible_gpus()
        if len(visible) != 1:
            release(held)
            raise UpdateRefused(f"pytest-xdist worker {worker} sees the GPUs {','.join(visible)!r}: "
                                "baselines are measured with one GPU per worker, each its own (or without -n)")
        try:
            held.append(_acquire(f"gpu-{_digest(visible[0])}", (
                f"pytest-xdist worker {worker}: GPU {visible[0]} is already measured on by another worker; "
                "baselines are measured with one GPU per worker, each its own (or without -n)")))
        except UpdateRefused:
            release(held)
            raise
    return held


def _acquire(name: str, refusal: str) -> FileLock:
    lock = FileLock(LOCKS / f"sftbench-{name}.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise UpdateRefused(refusal) from None
    return lock


def release(locks: list[FileLock]) -> None:
    for lock in locks:
        lock.release()


def _digest(text) -> str:
    return hashlib.sha1(str(text).encode()).hexdigest()[:12]
