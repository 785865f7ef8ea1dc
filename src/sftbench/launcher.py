"""One fresh process per case.

Cases start from a forkserver that has imported torch, transformers and sftbench once
(~12 s on an H200 host), so a case pays only for a fork and its own work.
The forkserver must not initialize CUDA, so that every case gets a fresh CUDA context and allocator:
torch.cuda.is_available(), which libraries call at import, initializes it unless
PYTORCH_NVML_BASED_CUDA_CHECK=1, so the launcher sets that; and a probe case checks that the fork
is clean, falling back to a plain spawn per case (slower, always safe) if it is not. A case whose
process dies (segfault, host OOM kill, timeout) becomes an `error` Result, not a crash; so does every
case of a launcher that did not start within its start-up limit (STARTUP_TIMEOUT_S, apart from the cases'
timeout, which counts from each case's start). The forkserver and the cases die with the process that
started them, however it ends (sftbench.lifeline).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from multiprocessing import forkserver

from sftbench import environment, lifeline
from sftbench.result import Result
from sftbench.spec import CaseSpec, RunOptions

DEFAULT_TIMEOUT_S = 1800.0  # per case, from its start; full epochs of the largest models need more
# The longest --sftbench-timeout: multiprocessing waits in milliseconds held in a C int, which ends at 24.8 days.
MAX_TIMEOUT_S = 7 * 24 * 3600.0  # a week
# The forkserver's imports and its probe case, whatever the case timeout: they take ~12 s on an H200 host and
# a minute on a busy CPU, which a case timeout of seconds must not turn into a launcher that did not start.
STARTUP_TIMEOUT_S = 600.0


class LauncherDidNotStart(RuntimeError):
    """The forkserver's imports or its probe case did not answer in time, or died."""


class Launcher:
    def __init__(self, timeout_s: float = DEFAULT_TIMEOUT_S, log=print):
        self.timeout_s = timeout_s
        self.startup_timeout_s = STARTUP_TIMEOUT_S
        self.log = log
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(["sftbench.forkserver_preload", "sftbench.case"])
        self.forkserver_start_s: float | None = None
        self._failed: LauncherDidNotStart | None = None
        # Every case holds the reading end; this process is the only writer (sftbench.lifeline).
        self._lifeline, self._lifeline_writer = self._context.Pipe(duplex=False)

    def start(self) -> float:
        """Start the forkserver (imports included), check its forks are CUDA-clean; return the seconds taken.

        LauncherDidNotStart after startup_timeout_s without an answer, and at once on every later call."""
        if self._failed is not None:
            raise self._failed
        if self.forkserver_start_s is None:
            os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
            started = time.perf_counter()
            try:
                clean = self._probe()
            except LauncherDidNotStart as error:
                self._failed = error
                raise
            if not clean:
                self.log("sftbench: an import initialized CUDA in the forkserver; starting each case with "
                         "spawn instead (each case then pays for its imports)")
                self._context = multiprocessing.get_context("spawn")
            self.forkserver_start_s = time.perf_counter() - started
        return self.forkserver_start_s

    def _probe(self) -> bool:
        """Whether a fork of the forkserver is CUDA-clean, within startup_timeout_s.

        The forkserver is started from this thread (it dies when this thread ends); the probe is started
        from a helper thread, since starting it waits for the forkserver's imports without a limit."""
        limit = f"no answer in {self.startup_timeout_s:g} s"
        if self._context.get_start_method() == "forkserver":
            forkserver.ensure_running()
        deadline = time.monotonic() + self.startup_timeout_s
        receiver, sender = self._context.Pipe(duplex=False)
        probes: list = []

        def start_probe():
            try:
                probes.append(self._spawn(_probe_fork, (sender,)))
            except (EOFError, OSError):  # the forkserver died or was ended: no probe
                pass

        starter = threading.Thread(target=start_probe, daemon=True)
        starter.start()
        starter.join(self.startup_timeout_s)
        if starter.is_alive():  # the forkserver's imports hang: end it, which ends the starting thread's wait
            os.kill(forkserver._forkserver._forkserver_pid, signal.SIGKILL)
            starter.join()
            raise LauncherDidNotStart(_not_started(limit))
        sender.close()  # so that a dead probe reads as EOF rather than a hang
        try:
            if not probes or not receiver.poll(max(0.0, deadline - time.monotonic())):
                raise EOFError(limit if probes else "the forkserver died")
            return not receiver.recv()
        except EOFError as error:
            raise LauncherDidNotStart(_not_started(str(error))) from None
        finally:
            for probe in probes:
                _reap(probe, grace_s=0)

    def _spawn(self, target, args):
        process = self._context.Process(target=target, args=(*args, self._lifeline), daemon=True)
        process.start()
        return process

    def run(self, spec: CaseSpec, options: RunOptions) -> Result:
        try:
            self.start()
        except LauncherDidNotStart as error:
            return _died(spec, options, str(error))
        receiver, sender = self._context.Pipe(duplex=False)
        started_wall, started = time.time(), time.perf_counter()
        process = None
        try:
            process = self._spawn(_case_main, (spec, options, sender, started_wall))
            sender.close()
            if receiver.poll(self.timeout_s):
                result = receiver.recv()
            else:
                process.kill()
                result = _died(spec, options, f"timed out after {self.timeout_s:g} s")
        except EOFError:  # the case's pipe closed without a result, or the forkserver ended before it started one
            if process is None:
                return _died(spec, options, "the case's process did not start: the launcher's forkserver ended")
            _reap(process)
            result = _died(spec, options, f"the case's process died with exit code {process.exitcode}"
                                          " (a negative code is the signal that killed it)")
        except BaseException:  # Ctrl-C (KeyboardInterrupt) or pytest ending the run: the case ends with it
            if process is not None:
                process.kill()
            raise
        _reap(process)
        result.overhead["wall_s"] = time.perf_counter() - started
        return result

    def close(self) -> None:
        """End every case still running (they watch the lifeline); the forkserver ends with this process."""
        self._lifeline_writer.close()


def _reap(process, grace_s: float = 60.0) -> None:
    """Wait for a process that has said its last, killing it if it hangs on the way out."""
    process.join(grace_s)
    if process.is_alive():
        process.kill()
        process.join()


def _not_started(why: str) -> str:
    return f"the case launcher did not start ({why}); importing sftbench.case in a fresh process shows why"


def _probe_fork(sender, lifeline_end) -> None:
    lifeline.hold(lifeline_end)
    import torch

    sender.send(bool(torch.cuda._is_in_bad_fork()))


def _case_main(*args) -> None:
    *case_args, lifeline_end = args
    lifeline.hold(lifeline_end)
    # Imported here, in the case's process (already loaded there by the forkserver), so that the
    # pytest process itself never imports torch, transformers or peft for a launch.
    from sftbench import case

    case.main(*case_args)


def _died(spec: CaseSpec, options: RunOptions, message: str) -> Result:
    return Result(case=spec.to_dict(), key=spec.key, outcome="error", message=message,
                  mode=options.mode, versions=environment.package_versions(),
                  machine=environment.machine())
