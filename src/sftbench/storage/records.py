"""Run records and self-test summaries as files.

Each pytest run of the benchmarks writes one run record to <results>/history/<started>-<commit>-<pid>.json (the
process id keeps apart the records of runs started in the same second): when it ran, the commit, machine and
stack, each configuration's status, its verdict as data and its metrics beside its baseline's; an interrupted run
says so, with the baselines it had rewritten. `python -m sftbench history` and the self-test read them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal

from sftbench.result import Metrics
from sftbench.storage import schema
from sftbench.storage.files import write_atomically
from sftbench.verdicts import Verdict


@dataclass
class Configuration:
    """A configuration of a run: the rows it stands for, what became of it, and its numbers beside its baseline's."""

    key: str
    rows: list[str]
    # The verdict where it was compared (regression, improvement, pass, no-baseline, not-comparable), else what
    # happened instead: baseline written, error, refused, baseline error.
    status: str
    now: Metrics
    verdict: Verdict | None = None
    message: str = ""  # one line where it was not compared: why
    baseline: Metrics | None = None
    gpu_uuid: str | None = None
    # Where the case's time went, in seconds (Result.overhead: spawn, build, set-up, warm-up, timed steps, traced
    # steps, their repeats, reading CUPTI's records, the memory categories, the whole case; and write_s, the
    # runner's writing of the result file): what a run of many configurations spends beside the timed steps.
    overhead: dict[str, float] = field(default_factory=dict)

    @property
    def compared(self) -> bool:
        return self.verdict is not None


@dataclass
class RunRecord:
    started: str  # ISO 8601, UTC
    finished: str
    commit: str | None  # of the code that ran
    machine: dict  # environment.machine(): GPU, driver, CUDA, host, allocator, settings
    versions: dict[str, str | None]
    command: str = ""
    mode: str = "quick"
    update_baselines: bool = False
    interrupted: bool = False  # ended by Ctrl-C or SIGTERM before its last row
    baselines_written: list[str] = field(default_factory=list)
    configurations: list[Configuration] = field(default_factory=list)
    lost_parts: list[str] = field(default_factory=list)  # pytest-xdist workers that ended without their report
    shard: str | None = None  # --sftbench-shard I/N: the part of the selection this run covered

    @property
    def gpu(self) -> str:
        return str(self.machine.get("gpu"))


class RunRecordFile(schema.Envelope):
    kind: Literal["run record"]
    record: RunRecord


class SelfTestFile(schema.Envelope):
    kind: Literal["self-test"]
    summary: dict


def write_record(folder: Path, record: RunRecord, pid: int) -> Path:
    """Write the run record into `folder` (NotWritten: storage.files)."""
    started = datetime.fromisoformat(record.started).strftime("%Y%m%dT%H%M%SZ")
    path = Path(folder) / f"{started}-{record.commit or 'unknown'}-{pid}.json"
    return write_atomically(path, schema.dumps("run record", record=record))


def read_record(path: Path) -> RunRecord:
    """A run record (of schema 1 or 2); StorageError naming the file and the field otherwise."""
    record = schema.load(path, RunRecordFile).record
    try:
        for moment in (record.started, record.finished):
            datetime.fromisoformat(moment)
    except ValueError as error:
        raise schema.StorageError(f"{path}: field record.started or record.finished: not an ISO time ({error})") \
            from None
    return record


def read_records(paths: list[Path]) -> tuple[list[tuple[Path, RunRecord]], list[str]]:
    """(the run records of files or folders of them, oldest first, with their paths; one line per file that is not
    one). A folder: every *.json in it."""
    files = [f for p in paths for f in (sorted(Path(p).glob("*.json")) if Path(p).is_dir() else [Path(p)])]
    records, problems = [], []
    for path in files:
        try:
            records.append((path, read_record(path)))
        except schema.StorageError as error:
            problems.append(str(error))
    return sorted(records, key=lambda item: item[1].started), problems


def write_selftest(path: Path, summary: dict) -> Path:
    return write_atomically(Path(path), schema.dumps("self-test", summary=summary))
