"""The files that hold a result: a run's results, <root>/<gpu-slug>/<key>.json, one per configuration it trained,
and baselines (sftbench.storage.baselines); reading either back with every check in one place."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Literal

from sftbench.environment import gpu_slug
from sftbench.result import Result
from sftbench.storage import schema
from sftbench.storage.files import write_atomically


class ResultFile(schema.Envelope):
    kind: Literal["result"]
    result: Result


class BaselineFile(schema.Envelope):
    kind: Literal["baseline"]
    rows: list[str]  # node ids of the seed rows the configuration stands for
    tables: list[str]
    metadata: dict  # the run's: machine, versions, commit, command, mode, when it was written
    result: Result


class ResultStore:
    """Results written by one run, one naming scheme for every writer: <root>/<gpu-slug>/<key>.json, and
    <key>.2.json, <key>.3.json ... when the same store gets a configuration again (repeats, modes).
    Written atomically; NotWritten (storage.files) names where a result went when its folder failed."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._written: Counter[Path] = Counter()

    def write(self, result: Result) -> Path:
        folder = self.root / gpu_slug(str(result.machine.get("gpu")))  # made by write_atomically, or rescued
        first = folder / f"{result.key}.json"
        self._written[first] += 1
        count = self._written[first]
        path = first if count == 1 else folder / f"{result.key}.{count}.json"
        return write_atomically(path, schema.dumps("result", result=result))

    def earlier(self) -> list[Path]:
        """Result files of earlier runs in this store's folders (a run replaces those of what it trains)."""
        return sorted(self.root.glob("*/*.json")) if self.root.is_dir() else []


def read_result(path: Path) -> Result:
    """A result file's result, or a baseline file's (reports and diagnostics read either); StorageError naming
    the file and the field otherwise."""
    data = schema.read_json(path)
    model = BaselineFile if schema.identify(data)[1] == "baseline" else ResultFile
    result = schema.parse(data, model, str(path)).result
    if problems := result_problems(result):
        raise schema.StorageError(f"{path}: {problems[0]}")
    return result


def scan_results(folder: Path) -> tuple[dict[str, Result], list[str]]:
    """(results by configuration key, one line per JSON file that is not a usable result: its path and why)."""
    results, problems = {}, []
    for path in sorted(Path(folder).glob("*.json")):
        try:
            result = read_result(path)
        except schema.StorageError as error:
            problems.append(str(error))
            continue
        results[result.key] = result
    return results, problems


def result_problems(result: Result) -> list[str]:
    """What makes a result unusable beyond its fields' types (checked by the schema): nothing may pass against
    nothing.

    An `ok` result needs minutes per 1000 samples, and a case on a GPU max reserved and max allocated memory, each > 0.
    Optional (None in results from before sftbench measured them), but where present: GPU-minutes, each traced
    step's seconds and SM clock > 0; the wall-time noise band, the clock-limit counts and the steps' weights
    >= 0. Every timed step has its tokens; every traced step's kernels are [index of a name, count, nanoseconds]
    and a repeat names an earlier traced step."""
    timing, kernels = result.timing, result.kernels
    problems = []
    if len(timing.step_durations_s) != len(timing.step_tokens):
        problems.append(f"field timing.step_durations_s: {len(timing.step_durations_s)} steps but "
                        f"{len(timing.step_tokens)} in timing.step_tokens")
    for i, step in enumerate(kernels.steps):
        bad = next((entry for entry in step.kernels if len(entry) != 3 or not 0 <= entry[0] < len(kernels.names)
                    or min(entry[1:]) < 0), None)
        if bad is not None:
            problems.append(f"field kernels.steps[{i}].kernels: {bad!r} is not [name index, count, nanoseconds]")
        if step.repeat_of is not None and not 0 <= step.repeat_of < i:
            problems.append(f"field kernels.steps[{i}].repeat_of: {step.repeat_of} is no earlier traced step")
    if result.outcome != "ok":
        return problems
    # A CPU case (the smoke rows) on a GPU host records that host's GPU, and has no GPU memory.
    on_gpu = gpu_slug(str(result.machine.get("gpu"))) != "cpu" and result.case.get("device") != "cpu"
    positive = [("timing.minutes_per_1000_samples", timing.minutes_per_1000_samples, True)]
    positive += [(f"memory.{name}", getattr(result.memory, name), on_gpu) for name in ("max_reserved_mib",
                                                                                        "max_allocated_mib")]
    positive += [("kernels.gpu_minutes_per_1000_samples", kernels.gpu_minutes_per_1000_samples, False)]
    positive += [(f"kernels.steps[{i}].seconds", step.seconds, True) for i, step in enumerate(kernels.steps)]
    positive += [(f"kernels.steps[{i}].sm_mhz", step.sm_mhz, False) for i, step in enumerate(kernels.steps)]
    not_negative = [("timing.wall_noise_pct", timing.wall_noise_pct)]
    not_negative += [(f"kernels.clock_limits[{name!r}]", n) for name, n in (kernels.clock_limits or {}).items()]
    not_negative += [(f"kernels.steps[{i}].weight", step.weight) for i, step in enumerate(kernels.steps)]
    for name, value, required in positive:
        if value is None and required:
            problems.append(f"field {name} is missing")
        elif value is not None and not value > 0:
            problems.append(f"field {name} is {value!r}, not a number > 0")
    problems += [f"field {name} is {value!r}, not a number >= 0" for name, value in not_negative
                 if value is not None and not (math.isfinite(value) and value >= 0)]
    return problems
