"""SFTBENCH_FAULT (sftbench.faults) on the CPU: however a case fails, hangs or its pytest ends, the row
says so in one line and no case process, forkserver or resource tracker outlives pytest.

Each test runs pytest on a one-row module of a tiny CPU model in a subprocess (its forkserver imports
torch and transformers: a few seconds each).
"""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

import sftbench

SMOKE_MODULE = """
import pytest

from sftbench.catalog import Row
from sftbench.spec import CaseSpec

ROW = Row(table="cpu_smoke", id="tiny", spec=CaseSpec("tiny-qwen", device="cpu", attention="sdpa", max_length=32,
                                                      samples=2, gradient_checkpointing=False))


def test_cpu_smoke(check_row):
    check_row(ROW)
"""
PHASES = {"start": "hang-start", "build": "hang-build", "train": "hang-train"}


def start_pytest(folder: Path, fault: str, *args: str) -> subprocess.Popen:
    """pytest -s on the one-row module in `folder` with SFTBENCH_FAULT=fault; its output in folder/out.txt."""
    (folder / "test_smoke.py").write_text(SMOKE_MODULE)
    (folder / "baselines").mkdir(exist_ok=True)
    env = {**os.environ, "SFTBENCH_FAULT": fault, "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join([str(Path(sftbench.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "pytest", "-s", "-p", "no:cacheprovider", "-rf", "test_smoke.py",
               "--sftbench-baselines", "baselines", "--sftbench-results", "results", *args]
    with open(folder / "out.txt", "wb") as out:
        return subprocess.Popen(command, cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT)


def wait_for(folder: Path, text: str, process: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in (folder / "out.txt").read_text(errors="replace"):
        assert process.poll() is None and time.monotonic() < deadline, (folder / "out.txt").read_text()
        time.sleep(0.1)


def running(processes: list[psutil.Process]) -> list[psutil.Process]:
    """Those still running (a zombie has ended: an orphan's zombie waits for an init that may never reap it)."""
    alive = []
    for process in processes:
        try:
            if process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
        except psutil.NoSuchProcess:
            pass
    return alive


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL, signal.SIGINT], ids=lambda s: s.name)
@pytest.mark.parametrize("phase", PHASES)
def test_no_process_outlives_pytest_however_it_ends(tmp_path, phase, signum):
    pytest_process = start_pytest(tmp_path, PHASES[phase], "--sftbench-timeout", "300")
    wait_for(tmp_path, f"sftbench fault: {PHASES[phase]} at {phase}", pytest_process)
    children = psutil.Process(pytest_process.pid).children(recursive=True)
    assert len(children) >= (1 if phase == "start" else 2)  # the forkserver, and the case's process
    os.kill(pytest_process.pid, signum)
    pytest_process.wait(30)
    deadline = time.monotonic() + 10
    while running(children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not running(children), [p.cmdline() for p in running(children)]


@pytest.mark.parametrize("fault, message", [
    ("raise", r"could not run: RuntimeError: SFTBENCH_FAULT=raise: injected error"),
    ("exit", r"could not run: the case's process died with exit code 3 "),
    ("segfault", r"could not run: the case's process died with exit code -11 "),
    ("hang-build:0.5", r"could not run: timed out after 4 s"),
    ("hang-start", r"could not run: the case launcher did not start \(no answer in 4 s\); importing "
                   r"sftbench.worker in a fresh process shows why"),
])
def test_a_failing_case_fails_its_row_with_one_line(tmp_path, fault, message):
    process = start_pytest(tmp_path, fault, "--sftbench-timeout", "4")
    assert process.wait(120) == pytest.ExitCode.TESTS_FAILED
    output = (tmp_path / "out.txt").read_text()
    assert re.search(rf"^test_cpu_smoke\[tiny\] {message}", output, re.M), output
    assert "INTERNALERROR" not in output
