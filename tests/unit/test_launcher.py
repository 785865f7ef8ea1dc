"""The launcher: its forkserver preload must be able to fork CUDA-clean case processes; a case that cannot
start is that case's outcome."""

import subprocess
import sys

from sftbench.launcher import Launcher
from sftbench.spec import CaseSpec, RunOptions


def test_the_forkserver_preload_imports_nothing_that_initializes_cuda():
    # bitsandbytes initializes CUDA when it is imported, and peft imports it wherever it is installed;
    # a forkserver holding either could only spawn cases (12 s each on an H200 host), never fork them.
    code = ("import sys, sftbench.case; "
            "print(sorted(m for m in ('peft', 'bitsandbytes', 'gptqmodel') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_a_forkserver_that_ends_before_a_case_starts_is_that_cases_error(monkeypatch):
    launcher = Launcher()
    monkeypatch.setattr(launcher, "start", lambda: 0.0)

    def spawn(target, args):
        raise EOFError("unexpected EOF")  # multiprocessing's read of the new pid from a dead forkserver

    monkeypatch.setattr(launcher, "_spawn", spawn)
    result = launcher.run(CaseSpec("tiny-qwen", device="cpu", attention="sdpa"), RunOptions())
    assert result.outcome == "error"
    assert "the case's process did not start: the launcher's forkserver ended" in result.message
