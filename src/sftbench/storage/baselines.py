"""Baselines: one file per configuration under baselines/<gpu-slug>/<key>.json: the configuration's result
measured on the GPU its folder names, the seed rows it stands for, and the run's metadata."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from sftbench.catalog import Row
from sftbench.environment import gpu_slug
from sftbench.kernels import largest_family
from sftbench.result import SLACK, MemoryPeaks, Result, compute_capability
from sftbench.storage import schema
from sftbench.storage.files import write_atomically
from sftbench.storage.results import BaselineFile, result_problems


class BaselineError(schema.StorageError):
    """A baseline file that cannot be used: corrupt, of an unknown schema, of another GPU or configuration."""


@dataclass
class Baseline:
    result: Result
    rows: list[str]  # node ids of the seed rows this configuration stands for
    tables: list[str]
    metadata: dict
    path: Path


class BaselineStore:
    def __init__(self, root: Path):
        self.root = Path(root)

    def folder(self, gpu: str) -> Path:
        return self.root / gpu_slug(gpu)

    def path(self, gpu: str, key: str) -> Path:
        return self.folder(gpu) / f"{key}.json"

    def load(self, gpu: str, key: str) -> Baseline | None:
        """The configuration's baseline on this GPU model, None where there is none; a file that is there but
        cannot be read (a dangling or looping link included) is a BaselineError, never a missing baseline."""
        path = self.path(gpu, key)
        return self.read(path) if path.is_symlink() or path.exists() else None

    def load_same_capability(self, gpu: str, key: str, capability: str | None) -> Baseline | None:
        """Where this GPU model has no baseline of the configuration: one of another GPU model of the same compute
        capability (its memory is comparable, its speed is not: sftbench.verdicts), else None."""
        if capability is None:
            return None
        for path in sorted(self.root.glob(f"*/{key}.json")):
            if path.parent.name != gpu_slug(gpu):
                baseline = self.read(path)
                if compute_capability(baseline.result.machine) == capability:
                    return baseline
        return None

    def read(self, path: Path) -> Baseline:
        try:
            data = schema.load(path, BaselineFile)
        except schema.StorageError as error:
            raise BaselineError(f"baseline {error}; restore it from git or rewrite it with "
                                "--sftbench-update-baselines") from None
        result = data.result
        measured_on = gpu_slug(str(result.machine.get("gpu")))
        if measured_on != path.parent.name or result.key != path.stem:
            raise BaselineError(f"baseline {path} was measured on {result.machine.get('gpu')!r} for {result.key!r} "
                                f"but is stored as {path.parent.name}/{path.stem}: a baseline counts only for "
                                "the GPU model and configuration it was measured on")
        problems = result_problems(result)
        if problems:
            raise BaselineError(f"baseline {path} is unusable: {'; '.join(problems)}; rewrite it with "
                                "--sftbench-update-baselines")
        return Baseline(result, data.rows, data.tables, data.metadata, path)

    def scan(self) -> tuple[list[Baseline], list[BaselineError]]:
        """(the usable baselines, an error naming each unusable file): one bad file hides no good one."""
        baselines, errors = [], []
        for path in sorted(self.root.glob("*/*.json")):
            try:
                baselines.append(self.read(path))
            except BaselineError as error:
                errors.append(error)
        return baselines, errors

    def write(self, result: Result, rows: list[Row], metadata: dict) -> Path:
        """Write atomically: a crash mid-write leaves the previous baseline intact (NotWritten: storage.files)."""
        path = self.path(str(result.machine.get("gpu")), result.key)
        metadata = {**metadata, "written": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        return write_atomically(path, schema.dumps("baseline", rows=[r.node_id for r in rows],
                                                   tables=sorted({r.table for r in rows}), metadata=metadata,
                                                   result=result))


def listing(baselines: list[Baseline]) -> list[dict]:
    """One entry per seed row that has a baseline, for scripts (`python -m sftbench baselines --json`)."""
    entries = []
    for baseline in baselines:
        r = baseline.result
        for node_id in baseline.rows:
            test, _, case_id = node_id.partition("[")
            entries.append({
                "case_id": case_id.rstrip("]"), "test": test, "tables": baseline.tables, "key": r.key,
                "gpu": r.machine.get("gpu"), "outcome": r.outcome, "mode": r.mode,
                "max_reserved_mib": r.memory.max_reserved_mib, "max_allocated_mib": r.memory.max_allocated_mib,
                "nvml_peak_mib": r.memory.nvml_peak_mib, "minutes_per_1000_samples": r.timing.minutes_per_1000_samples,
                "gpu_minutes_per_1000_samples": r.kernels.gpu_minutes_per_1000_samples,
                "gpu_busy_pct": r.kernels.busy_pct, "gpu_minutes_by_family": r.kernels.gpu_minutes_by_family,
                "largest_family": largest_family(r.kernels), "largest_memory_category": largest_category(r.memory),
                "host": r.machine.get("host"),
                "gpu_uuid": r.machine.get("gpu_uuid"), "tokens_per_s": r.timing.tokens_per_s,
                "attention": r.attention, "quantization": r.case["quantization"],
                "quantization_backend": r.quantization_backend, "trainable_params": r.trainable_params,
                "versions": r.versions, "written": baseline.metadata.get("written"),
                "commit": baseline.metadata.get("commit"),
            })
    return entries


def largest_category(memory: MemoryPeaks) -> dict | None:
    """The memory category holding the most at the allocated peak, with its MiB and share of the peak; None where
    the result has no categories."""
    if memory.categories is None or not memory.categories.peak_mib:
        return None
    held = {name: mib for name, mib in memory.categories.by_name().items() if name != SLACK}
    name = max(held, key=held.get)
    return {"category": name, "mib": held[name], "share_pct": 100 * held[name] / memory.categories.peak_mib}
