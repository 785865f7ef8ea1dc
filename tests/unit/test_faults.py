"""SFTBENCH_FAULT (sftbench.faults) on the CPU: however a case fails, hangs or its pytest ends, the row
says so in one line and no case process, forkserver or resource tracker outlives pytest.

Each test runs pytest on a one-row module of a tiny CPU model in a subprocess (its forkserver imports
torch and transformers: a few seconds each).
"""

import contextlib
import errno
import json
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
from sftbench.catalog import Row
from sftbench.launcher import STARTUP_TIMEOUT_S
from sftbench.runner import RunConfig, Runner, RunRefused
from sftbench.spec import CaseSpec
from sftbench.storage import files, locks
from sftbench.storage.results import read_result

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


# pytest with SIGINT raising KeyboardInterrupt, whatever it inherited: a background job (`make test &` in a
# script) starts with SIGINT ignored, which children inherit and subprocess does not restore, so the test's
# SIGINT would not reach it.
PYTEST_WITH_SIGINT = ("import signal, sys, pytest; signal.signal(signal.SIGINT, signal.default_int_handler); "
                      "sys.exit(pytest.main())")


@contextlib.contextmanager
def sigint_ignored():
    """SIGINT ignored, as a background job (`make test &` in a script) starts, and as children inherit it."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.fixture
def start_pytest(tmp_path):
    """Starts pytest -s on a one-row module in tmp_path with SFTBENCH_FAULT=fault; its output in tmp_path/out.txt.
    Whatever the test's outcome, every process it started, however deep, is killed when it ends."""
    started = []

    def start(fault: str, *args: str) -> subprocess.Popen:
        (tmp_path / "test_smoke.py").write_text(SMOKE_MODULE)
        (tmp_path / "baselines").mkdir(exist_ok=True)
        env = {**os.environ, "SFTBENCH_FAULT": fault, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": os.pathsep.join(
            [str(Path(sftbench.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
        command = [sys.executable, "-c", PYTEST_WITH_SIGINT, "-s", "-p", "no:cacheprovider", "-rf", "test_smoke.py",
                   "--sftbench-baselines", "baselines", "--sftbench-results", "results", *args]
        # Started as from a background job, whether or not this run is one; in a process group of its own, which
        # the forkserver and the cases join, to kill them all at the end.
        with open(tmp_path / "out.txt", "wb") as out, sigint_ignored():
            started.append(subprocess.Popen(command, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
                                            process_group=0))
        return started[-1]

    yield start
    for process in started:
        with contextlib.suppress(ProcessLookupError):  # the group is empty: nothing outlived the test
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def wait_for(folder: Path, text: str, process: subprocess.Popen) -> None:
    """Until `text` is in the output: a fault's line comes once the launcher has started, however busy the host."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
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
def test_no_process_outlives_pytest_however_it_ends(start_pytest, tmp_path, phase, signum):
    pytest_process = start_pytest(PHASES[phase], "--sftbench-timeout", "300")
    wait_for(tmp_path, f"sftbench fault: {PHASES[phase]} at {phase}", pytest_process)
    children = psutil.Process(pytest_process.pid).children(recursive=True)
    assert len(children) >= (1 if phase == "start" else 2)  # the forkserver, and the case's process
    os.kill(pytest_process.pid, signum)
    pytest_process.wait(30)
    deadline = time.monotonic() + 10
    while running(children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not running(children), [p.cmdline() for p in running(children)]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_an_interrupted_update_run_leaves_a_record_that_says_so(start_pytest, tmp_path, signum):
    pytest_process = start_pytest("hang-train", "--sftbench-timeout", "300", "--sftbench-update-baselines")
    wait_for(tmp_path, "sftbench fault: hang-train at train", pytest_process)
    os.kill(pytest_process.pid, signum)
    assert pytest_process.wait(60) == pytest.ExitCode.INTERRUPTED
    [record] = (tmp_path / "results" / "history").iterdir()
    data = json.loads(record.read_text())["record"]
    assert (data["interrupted"], data["update_baselines"], data["baselines_written"]) == (True, True, [])
    assert "the run was interrupted after 0 configurations; baselines it rewrote: none" in \
        (tmp_path / "out.txt").read_text()


# The case's timeout counts from its start, apart from the launcher's start-up (which imports torch: seconds on
# any host), so 1 s times out the hanging case and nothing else. The start-up wait is shortened only in the
# inner run where it is to time out, through a conftest (the launcher's is STARTUP_TIMEOUT_S).
@pytest.mark.parametrize("fault, timeout, startup_timeout, message", [
    ("raise", 120, None, r"could not run: RuntimeError: SFTBENCH_FAULT=raise: injected error"),
    ("exit", 120, None, r"could not run: the case's process died with exit code 3 "),
    ("segfault", 120, None, r"could not run: the case's process died with exit code -11 "),
    ("hang-build:0.5", 1, None, r"could not run: timed out after 1 s"),
    ("hang-start", 1, 2, r"could not run: the case launcher did not start \(no answer in 2 s\); importing "
                         r"sftbench.case in a fresh process shows why"),
])
def test_a_failing_case_fails_its_row_with_one_line(start_pytest, tmp_path, fault, timeout, startup_timeout, message):
    if startup_timeout is not None:
        (tmp_path / "conftest.py").write_text(f"from sftbench import launcher\n\n"
                                              f"launcher.STARTUP_TIMEOUT_S = {startup_timeout}\n")
    process = start_pytest(fault, "--sftbench-timeout", str(timeout))
    assert process.wait(STARTUP_TIMEOUT_S + timeout) == pytest.ExitCode.TESTS_FAILED
    output = (tmp_path / "out.txt").read_text()
    assert re.search(rf"^test_cpu_smoke\[tiny\] {message}", output, re.M), output
    assert "INTERNALERROR" not in output


# --- nothing lost: folders checked before training, atomic writes, a result that cannot be written is kept ------

ROW = Row(table="lora_max_length", id="qwen-7b-chat-4096", spec=CaseSpec("qwen-7b-chat", max_length=4096))


def runner_for(tmp_path, monkeypatch, **config) -> Runner:
    config = {"baselines_dir": tmp_path / "baselines", "results_dir": tmp_path / "results", **config}
    lines = []
    monkeypatch.setattr(locks, "GPU_LOCKS", tmp_path)  # this test's GPU locks only
    runner = Runner(RunConfig(**config), log=lines.append)
    runner.lines = lines
    monkeypatch.setattr(Runner, "gpu", "NVIDIA H200")
    return runner


def test_comparing_needs_an_existing_baselines_folder_and_updating_creates_it(tmp_path, monkeypatch):
    with pytest.raises(RunRefused, match=rf"^sftbench: no baselines folder {tmp_path / 'typo'}: give the right "
                                         r"--sftbench-baselines \(it is created only by --sftbench-update-baselines\)$"):
        runner_for(tmp_path, monkeypatch, baselines_dir=tmp_path / "typo").prepare()
    updater = runner_for(tmp_path, monkeypatch, baselines_dir=tmp_path / "typo", update_baselines=True)
    updater.prepare()
    assert (tmp_path / "typo" / "nvidia-h200").is_dir()
    updater.close()


def test_a_folder_that_cannot_be_written_refuses_the_run_before_training(tmp_path, monkeypatch):
    (tmp_path / "a-file").write_text("")
    runner = runner_for(tmp_path, monkeypatch, results_dir=tmp_path / "a-file" / "results")
    (tmp_path / "baselines").mkdir()
    for _ in range(2):  # refused once, and from then on
        with pytest.raises(RunRefused, match=r"a-file/results is not a writable folder \(Not a directory\): "
                                             "nothing was trained$"):
            runner.result_for(ROW.spec, ROW.node_id)
    assert runner._launcher is None


def test_a_second_update_run_of_the_same_folder_is_refused_whatever_its_shard(tmp_path, monkeypatch):
    first = runner_for(tmp_path, monkeypatch, update_baselines=True)
    first.prepare()
    for shard in (None, "1/1", "2/2"):
        with pytest.raises(RunRefused, match="another sftbench run is writing .*baselines: wait for it"):
            runner_for(tmp_path, monkeypatch, update_baselines=True, shard=shard,
                       results_dir=tmp_path / f"results-{shard}").prepare()
    first.close()
    runner_for(tmp_path, monkeypatch, update_baselines=True).prepare()  # released at the end of a run


@pytest.mark.parametrize("visible, refusal", [
    ("0,1", "worker gw0 sees the GPUs '0,1': baselines are measured with one GPU per worker"),
    ("", "worker gw0 sees the GPUs '': baselines are measured with one GPU per worker"),
    ("1", "worker gw0: GPU 1 is already measured on by another worker"),
])
def test_xdist_workers_update_baselines_only_each_on_a_gpu_of_its_own(tmp_path, monkeypatch, visible, refusal):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    other = runner_for(tmp_path, monkeypatch, update_baselines=True, worker="gw1", run_id="run")
    other.prepare()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    with pytest.raises(RunRefused, match=re.escape(refusal)):
        runner_for(tmp_path, monkeypatch, update_baselines=True, worker="gw0", run_id="run").prepare()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    runner_for(tmp_path, monkeypatch, update_baselines=True, worker="gw0", run_id="run").prepare()
    other.close()
    on_cpu = runner_for(tmp_path, monkeypatch, update_baselines=True, worker="gw2", run_id="run")
    monkeypatch.setattr(Runner, "gpu", "cpu")  # on the CPU there is no GPU to share
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    on_cpu.prepare()


def full_disk(monkeypatch, folder: Path) -> None:
    """Writes into `folder` fail as on a full disk, after the temporary file was created."""
    real_fsync = os.fsync

    def fsync(fd):
        if Path(os.readlink(f"/proc/self/fd/{fd}")).parent == folder:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def test_a_full_disk_leaves_no_partial_file_and_the_result_is_kept_where_the_message_says(
        tmp_path, monkeypatch, result_factory):
    monkeypatch.setattr(files, "RESCUE_DIR", tmp_path / "rescued")
    runner = runner_for(tmp_path, monkeypatch)
    (tmp_path / "results" / "nvidia-h200").mkdir(parents=True)
    full_disk(monkeypatch, tmp_path / "results" / "nvidia-h200")
    result = result_factory()
    monkeypatch.setattr(runner, "prepare", lambda: None)
    monkeypatch.setattr(runner, "_launcher", type("Launcher", (), {"run": lambda self, spec, options: result})())
    runner.result_for(ROW.spec, ROW.node_id)
    path = tmp_path / "results" / "nvidia-h200" / f"{ROW.spec.key}.json"
    rescued = files.rescue_path(path)
    assert runner.lines[-1] == (f"sftbench: {ROW.node_id}: could not write {path} (No space left on device); "
                                f"it is in {rescued} instead")
    assert list((tmp_path / "results").rglob("*")) == [tmp_path / "results" / "nvidia-h200"]  # no tmp, no 0-byte JSON
    assert read_result(rescued) == result


def test_a_baseline_that_cannot_be_written_fails_its_row_and_is_kept(tmp_path, monkeypatch, result_factory):
    monkeypatch.setattr(files, "RESCUE_DIR", tmp_path / "rescued")
    runner = runner_for(tmp_path, monkeypatch, update_baselines=True, results_dir=None)
    monkeypatch.setattr(runner, "skip_reason", lambda spec: None)
    runner.results[ROW.spec] = result_factory()
    (tmp_path / "baselines" / "nvidia-h200").mkdir(parents=True)
    full_disk(monkeypatch, tmp_path / "baselines" / "nvidia-h200")
    outcome = runner.check(ROW)
    assert (outcome.action, outcome.status) == ("fail", "refused")
    assert outcome.message.startswith(f"{ROW.node_id}: baseline not written: could not write ")
    rescued = files.rescue_path(tmp_path / "baselines" / "nvidia-h200" / f"{ROW.spec.key}.json")
    assert outcome.message.endswith(f"it is in {rescued} instead") and "/baselines/nvidia-h200/" in str(rescued)
    assert not list((tmp_path / "baselines" / "nvidia-h200").iterdir())
