"""One fresh process per case.

Cases start from a forkserver that has imported torch, transformers and sftbench once
(~12 s on the GPU machine), so a case pays only for a fork and its own work.
The forkserver must not initialize CUDA, so that every case gets a fresh CUDA context and allocator:
torch.cuda.is_available(), which libraries call at import, initializes it unless
PYTORCH_NVML_BASED_CUDA_CHECK=1, so the launcher sets that; and a probe case checks that the fork
is clean, falling back to a plain spawn per case (slower, always safe) if it is not. A case whose
process dies (segfault, host OOM kill, timeout) becomes an `error` Result, not a crash.
"""

from __future__ import annotations

import multiprocessing
import os
import time

from sftbench import environment
from sftbench.result import Result
from sftbench.spec import CaseSpec, RunOptions

DEFAULT_TIMEOUT_S = 1800.0  # per case; full epochs of the largest models need more (--sftbench-timeout)
STARTUP_TIMEOUT_S = 600.0


class Launcher:
    def __init__(self, timeout_s: float = DEFAULT_TIMEOUT_S, log=print):
        self.timeout_s = timeout_s
        self.log = log
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(["sftbench.worker"])
        self.forkserver_start_s: float | None = None

    def start(self) -> float:
        """Start the forkserver (imports included), check its forks are CUDA-clean; return the seconds taken."""
        if self.forkserver_start_s is None:
            os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
            started = time.perf_counter()
            receiver, sender = self._context.Pipe(duplex=False)
            probe = self._spawn(_probe_fork, (sender,))
            sender.close()  # so that a dead probe reads as EOF rather than a hang
            try:
                if not receiver.poll(STARTUP_TIMEOUT_S):
                    raise EOFError(f"no answer in {STARTUP_TIMEOUT_S:.0f} s")
                clean = not receiver.recv()
            except EOFError as error:
                raise RuntimeError(f"sftbench: the case launcher did not start ({error}); importing sftbench.worker "
                                   "in a fresh process shows why") from None
            finally:
                _reap(probe)
            if not clean:
                self.log("sftbench: an import initialized CUDA in the forkserver; starting each case with "
                         "spawn instead (each case then pays for its imports)")
                self._context = multiprocessing.get_context("spawn")
            self.forkserver_start_s = time.perf_counter() - started
        return self.forkserver_start_s

    def _spawn(self, target, args):
        process = self._context.Process(target=target, args=args, daemon=True)
        process.start()
        return process

    def run(self, spec: CaseSpec, options: RunOptions) -> Result:
        self.start()
        receiver, sender = self._context.Pipe(duplex=False)
        started_wall, started = time.time(), time.perf_counter()
        process = self._spawn(_case_main, (spec, options, sender, started_wall))
        sender.close()
        try:
            if receiver.poll(self.timeout_s):
                result = Result.from_dict(receiver.recv())
            else:
                process.kill()
                result = _died(spec, options, f"timed out after {self.timeout_s:.0f} s")
        except EOFError:
            _reap(process)
            result = _died(spec, options, f"the case's process died with exit code {process.exitcode}"
                                          " (a negative code is the signal that killed it)")
        _reap(process)
        result.overhead["wall_s"] = time.perf_counter() - started
        return result


def _reap(process, grace_s: float = 60.0) -> None:
    """Wait for a process that has said its last, killing it if it hangs on the way out."""
    process.join(grace_s)
    if process.is_alive():
        process.kill()
        process.join()


def _probe_fork(sender) -> None:
    import torch

    sender.send(bool(torch.cuda._is_in_bad_fork()))


def _case_main(*args) -> None:
    # Imported here, in the case's process (already loaded there by the forkserver), so that the
    # pytest process itself never imports torch, transformers or peft for a launch.
    from sftbench import worker

    worker.main(*args)


def _died(spec: CaseSpec, options: RunOptions, message: str) -> Result:
    return Result(case=spec.to_dict(), key=spec.key, outcome="error", message=message,
                  mode=options.mode, versions=environment.package_versions(),
                  machine=environment.machine())
