"""Fault injection, a test tool: SFTBENCH_FAULT makes a case fail in a chosen way at a chosen phase.

The unit tests use it to prove, on the CPU, that a failing or hanging case costs one row and leaves
no process behind. Never set it for a measurement: it is recorded among a result's settings, and a
faulted case has no result to write as a baseline.

    SFTBENCH_FAULT=KIND[:SECONDS]   (SECONDS: wait that long at the phase before the fault)

    raise       the case raises RuntimeError as training starts: an `error` outcome, the row fails
    exit        the case's process exits with code 3 as training starts: "died with exit code 3"
    segfault    the case's process kills itself with SIGSEGV as training starts: "exit code -11"
    hang-start  the launcher's forkserver hangs while importing the worker: the launcher's start-up
                wait (sftbench.launcher.STARTUP_TIMEOUT_S, 600 s, whatever --sftbench-timeout) gives up
    hang-build  the case hangs before building its model: killed at --sftbench-timeout from its start
    hang-train  the case hangs as training starts: killed at --sftbench-timeout from its start

A phase reached with a fault set writes one line to standard error ("sftbench fault: ...").
"""

from __future__ import annotations

import os
import signal
import sys
import time

FAULT = "SFTBENCH_FAULT"
# kind -> the phase it fires at: start (the forkserver's imports), build (before the model), train
KINDS = {"raise": "train", "exit": "train", "segfault": "train", "hang-start": "start", "hang-build": "build",
         "hang-train": "train"}


def configured(environ=os.environ) -> tuple[str, float] | None:
    """(kind, delay in seconds) of SFTBENCH_FAULT, None where unset; ValueError naming what is wrong."""
    text = environ.get(FAULT, "").strip()
    if not text:
        return None
    kind, _, delay = text.partition(":")
    if kind not in KINDS:
        raise ValueError(f"{FAULT}={text!r}: the kind is one of {', '.join(KINDS)}")
    try:
        seconds = float(delay) if delay else 0.0
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):
        raise ValueError(f"{FAULT}={text!r}: the delay must be a number of seconds >= 0")
    return kind, seconds


def at(phase: str) -> None:
    """Fire the configured fault if it belongs to `phase` (start | build | train)."""
    fault = configured()
    if fault is None or KINDS[fault[0]] != phase:
        return
    kind, delay = fault
    print(f"sftbench fault: {kind} at {phase} (pid {os.getpid()}, after {delay:g} s)", file=sys.stderr, flush=True)
    time.sleep(delay)
    if kind == "raise":
        raise RuntimeError(f"{FAULT}={kind}: injected error")
    if kind == "exit":
        os._exit(3)
    if kind == "segfault":
        os.kill(os.getpid(), signal.SIGSEGV)
    while True:  # the hangs
        time.sleep(3600)
