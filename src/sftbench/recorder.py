"""A run's record as it happens: each configuration the runner checked, the configurations of pytest-xdist
workers merged in as they end (or the workers that ended without theirs), and at the end the RunRecord, written
to <results>/history/ by the storage layer and summed up by sftbench.render."""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

from pydantic import TypeAdapter

from sftbench.result import Metrics
from sftbench.runner import Runner
from sftbench.storage.files import NotWritten
from sftbench.storage.records import Configuration, RunRecord, write_record

PARTS = TypeAdapter(list[Configuration])  # a worker's configurations, as pytest-xdist carries them: plain data


class Recorder:
    def __init__(self, runner: Runner):
        self.runner = runner
        self.started = datetime.now(timezone.utc)
        self.merged: list[Configuration] = []  # the other parts' (pytest-xdist workers)
        self.lost_parts: list[str] = []  # parts that ended without sending theirs (a crashed worker)

    def configurations(self) -> list[Configuration]:
        """This run's configurations, in the order first checked, each once for all the rows that show it; then
        the merged parts'."""
        by_result: dict[int, list] = {}
        for outcome in self.runner.outcomes:
            by_result.setdefault(id(outcome.result), []).append(outcome)
        own = []
        for outcomes in by_result.values():
            first = outcomes[0]
            own.append(Configuration(
                key=first.result.key, rows=[o.row.node_id for o in outcomes], status=first.status,
                now=Metrics.of(first.result), verdict=first.verdict,
                message="" if first.verdict is not None else first.message.split("\n")[0],
                baseline=None if first.baseline is None else Metrics.of(first.baseline),
                gpu_uuid=first.result.machine.get("gpu_uuid"), overhead=self._overhead(first.result)))
        return own + self.merged

    def _overhead(self, result) -> dict[str, float]:
        """Where the case's time went (Result.overhead) and the runner's writing of its result file."""
        written = self.runner.write_s.get(result.key)
        return {**result.overhead, **({} if written is None else {"write_s": written})}

    def part(self) -> list:
        """This part's own configurations as plain data, for the controller of pytest-xdist workers."""
        return PARTS.dump_python(self.configurations(), mode="json")

    def merge(self, part: list) -> None:
        self.merged += PARTS.validate_python(part)

    def lose(self, name: str) -> None:
        """A part that ended without its configurations: the summary and the run record say what they lack."""
        self.lost_parts.append(name)

    def record(self, interrupted: bool = False) -> RunRecord:
        runner = self.runner
        metadata = runner.metadata()
        return RunRecord(
            started=self.started.isoformat(timespec="seconds"),
            finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            commit=metadata.pop("commit"), versions=metadata.pop("versions"), command=metadata.pop("command"),
            mode=metadata.pop("mode"), machine=metadata, update_baselines=runner.config.update_baselines,
            interrupted=interrupted, baselines_written=[str(p) for p in runner.baselines_written],
            configurations=self.configurations(), lost_parts=self.lost_parts, shard=runner.config.shard)

    def write(self, record: RunRecord) -> Path | None:
        """The run record in <results>/history/; nothing without a results folder, or where the run checked no
        configuration and lost no part and was not interrupted after reaching its first case."""
        results = self.runner.config.results_dir
        if results is None or not (record.configurations or record.lost_parts
                                   or (record.interrupted and self.runner.started)):
            return None
        try:
            return write_record(results / "history", record, os.getpid())
        except NotWritten as error:
            self.runner.log(f"sftbench: run record: {error}")
            return None
