"""The launcher's processes die with the process that started them (pytest, or `python -m sftbench run`).

CI cancels a job with SIGTERM or SIGKILL: no handler runs in the dying process, so its children must
notice on their own, or they train on, holding the GPU. Each case process and the forkserver do:

- the forkserver asks the kernel for SIGKILL when the thread that started it ends (PR_SET_PDEATHSIG);
- a case process asks the same relative to the forkserver, gives up its copy of the forkserver's
  "alive" pipe (which every forkserver child inherits, and which kept the forkserver from ever seeing
  its parent go), and watches a lifeline: a pipe whose only writer is the starting process; when that
  process is gone, reading the pipe ends and the case exits at once.
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading
from multiprocessing import forkserver

PR_SET_PDEATHSIG = 1
EXIT_ORPHANED = 70  # the exit code of a case whose starting process is gone


def die_with_parent() -> None:
    """Linux: SIGKILL this process when the thread that started it ends."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def hold(lifeline) -> None:
    """In a case process: die with the forkserver and with the process holding the lifeline's other end."""
    die_with_parent()
    alive = getattr(forkserver._forkserver, "_forkserver_alive_fd", None)
    if alive is not None:
        os.close(alive)
        forkserver._forkserver._forkserver_alive_fd = None
    threading.Thread(target=_exit_when_cut, args=(lifeline,), name="sftbench-lifeline", daemon=True).start()


def _exit_when_cut(lifeline) -> None:
    try:
        lifeline.recv_bytes()  # the starting process never writes: this returns only on EOF
    except (EOFError, OSError):
        pass
    os._exit(EXIT_ORPHANED)
