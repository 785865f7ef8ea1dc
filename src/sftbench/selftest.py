"""The self-test: does the suite flag what it should, and only that, on a real GPU host?

A self-test is a set of ordinary benchmark runs of one selection of rows, against baselines written
for it: clean reruns (nothing changed: no row may fail), a run with SFTBENCH_INJECT_GPU_PCT and
SFTBENCH_INJECT_MEMORY_PCT (every configuration must show a kernel and a memory regression), a run
with SFTBENCH_INJECT_HOST_MS (a host-side regression, or within the wall-time noise band where that
band is wider: the summary says which), runs that slow one kernel family (SFTBENCH_INJECT_KERNELS: each
configuration flagged naming that family) and runs that grow one memory category (SFTBENCH_INJECT_MEMORY_IN:
each configuration flagged, the category that grew most at the peak the target's). See sftbench.injection.

`python -m sftbench selftest --run -k SELECTION -- [pytest args]` makes the runs; `python -m sftbench
selftest RECORD...` summarizes run records (each run's <results>/history/*.json) into one JSON.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sftbench import render
from sftbench.injection import (
    GPU_PCT,
    HOST_MS,
    KERNEL_TARGETS,
    KERNELS,
    MEMORY_IN,
    MEMORY_PCT,
    MEMORY_TARGETS,
    injected,
)
from sftbench.result import SLACK
from sftbench.storage.records import Configuration, RunRecord
from sftbench.verdicts import Note

# Stage name -> the knobs it sets; "update" writes the baselines.
STAGES = {
    "update": {},
    "clean1": {},
    "clean2": {},
    "attention3": {KERNELS: "attention:3"},
    "gemm3": {KERNELS: "gemm:3"},
    "activations3": {MEMORY_IN: "activations:3"},
    "optimizer3": {MEMORY_IN: "optimizer:3"},
    "frozen3": {MEMORY_IN: "frozen:3"},
    "gpu5-memory3": {GPU_PCT: "5", MEMORY_PCT: "3"},
    "host60ms": {HOST_MS: "60"},
}
SPEED_METRICS = {"gpu": "gpu_minutes_per_1000_samples", "wall": "minutes_per_1000_samples"}
MEMORY_METRICS = ("max_reserved_mib", "max_allocated_mib")


def run_stages(pytest_args: list[str], results_root: Path, stages=tuple(STAGES), log=print) -> list[Path]:
    """Run the stages as `python -m pytest tests/benchmarks ARGS`, each into results_root/<stage>; return the
    folders of their run records."""
    folders = []
    for stage in stages:
        knobs = STAGES[stage]
        results = results_root / stage
        command = [sys.executable, "-m", "pytest", "tests/benchmarks", *pytest_args, "--sftbench-results", str(results)]
        if stage == "update":
            command.append("--sftbench-update-baselines")
        log(f"sftbench selftest: {stage}: {' '.join(command)}")
        subprocess.run(command, env={**os.environ, **knobs}, check=False)
        folders.append(results / "history")
    return folders


def _change_pct(configuration: Configuration, metric: str) -> float | None:
    now = getattr(configuration.now, metric)
    baseline = None if configuration.baseline is None else getattr(configuration.baseline, metric)
    return None if now is None or not baseline else round(100 * (now / baseline - 1), 2)


def _changes(configurations: list[Configuration], metric: str) -> dict[str, float | None]:
    return {c.key: _change_pct(c, metric) for c in configurations}


def _labels(configurations: list[Configuration]) -> dict[str, str]:
    return {c.key: render.status(c) for c in configurations}


def _family_margins(configurations: list[Configuration]) -> dict[str, dict | None]:
    """Per configuration, the family that came nearest its threshold: its change against the GPU's pace, the
    threshold and what it rests on (how far a clean rerun was from failing a row)."""
    margins = {}
    for c in configurations:
        families = [f for f in (c.verdict.families if c.verdict else []) if f.threshold_pct and f.before and f.after]
        nearest = max(families, key=lambda f: abs(f.change_pct) / f.threshold_pct, default=None)
        margins[c.key] = None if nearest is None else {
            "family": nearest.family, "change_pct": round(nearest.change_pct, 2),
            "threshold_pct": round(nearest.threshold_pct, 2), "basis": nearest.basis}
    return margins


def summarize(records: list[tuple[Path, RunRecord]]) -> dict:
    """One JSON of the self-test from its comparing runs' records (baseline-writing runs are left out), each stage
    with its own record, start, commit and configurations: the newest run's GPU and stack; each clean rerun; each
    injection, the newest run of each knob."""
    comparing = sorted(((path, r) for path, r in records if not r.update_baselines), key=lambda item: item[1].started,
                       reverse=True)
    if not comparing:
        raise ValueError("no comparing run among the records")
    for path, record in comparing:
        if any(c.verdict is not None and c.verdict.recorded_as_text for c in record.configurations):
            raise ValueError(f"{path} is a run record of schema 1, whose verdicts are text: the self-test reads "
                             "verdicts as data; make its runs again")
    newest = comparing[0][1]
    summary = {
        "gpu": newest.gpu, "driver": newest.machine.get("driver"), "versions": newest.versions,
        "records": [str(path) for path, _ in comparing],
        "clean_reruns": [], "family_injected": {}, "memory_injected": {}, "injected": {},
    }
    for path, record in comparing:
        configurations = record.configurations
        stage = {"record": str(path), "started": record.started, "commit": record.commit,
                 "configurations": sorted(c.key for c in configurations)}
        knobs = {name: record.machine.get("settings", {})[name] for name in injected(record.machine.get("settings", {}))}
        if not knobs:
            summary["clean_reruns"].append({
                **stage, "failures": sum(c.status == "regression" for c in configurations),
                "verdicts": _labels(configurations),
                "gpu_time_change_pct": _changes(configurations, SPEED_METRICS["gpu"]),
                "wall_time_change_pct": _changes(configurations, SPEED_METRICS["wall"]),
                "host_pace_change_pct": _changes(configurations, "host_probe_ms"),
                "max_reserved_change_pct": _changes(configurations, "max_reserved_mib"),
                "nearest_family": _family_margins(configurations),
                "remeasured": _remeasured(configurations)})
        if KERNELS in knobs:
            summary["family_injected"].setdefault(knobs[KERNELS], {  # the newest run of a knob
                **stage, **family_stage(configurations, knobs[KERNELS].partition(":")[0])})
        if MEMORY_IN in knobs:
            summary["memory_injected"].setdefault(knobs[MEMORY_IN], {
                **stage, **memory_stage(configurations, MEMORY_TARGETS[knobs[MEMORY_IN].partition(":")[0]])})
        kinds = {c.key: c.verdict.kinds if c.verdict else [] for c in configurations}
        if GPU_PCT in knobs:
            summary["injected"].setdefault(f"gpu_time_{knobs[GPU_PCT]}pct", {
                **stage, "knobs": knobs, "flagged": sum("kernel" in k for k in kinds.values()),
                "verdicts": _labels(configurations),
                "gpu_time_change_pct": _changes(configurations, SPEED_METRICS["gpu"])})
        if MEMORY_PCT in knobs:
            summary["injected"].setdefault(f"memory_{knobs[MEMORY_PCT]}pct", {
                **stage, "knobs": knobs, "flagged": sum("memory" in k for k in kinds.values()),
                "verdicts": _labels(configurations),
                **{f"{metric}_change_pct": _changes(configurations, metric) for metric in MEMORY_METRICS}})
        if HOST_MS in knobs:
            host_side = sum("host-side" in k for k in kinds.values())
            summary["injected"].setdefault("host_time", {
                **stage, "knobs": knobs, "flagged": host_side, "within_noise": len(configurations) - host_side,
                "verdicts": _labels(configurations),
                "wall_time_change_pct": _changes(configurations, SPEED_METRICS["wall"]),
                "gpu_time_change_pct": _changes(configurations, SPEED_METRICS["gpu"])})
    summary["clean_reruns"].reverse()  # numbered in the order they ran
    return summary


def _remeasured(configurations: list[Configuration]) -> dict[str, dict]:
    """The configurations measured twice, their wall time alone having regressed first: the first's change, the
    host's own pace then, and whether the second confirmed it (sftbench.runner)."""
    return {c.key: note.detail for c in configurations if c.verdict is not None
            for note in c.verdict.notes if note.code == "re-measured"}


def family_stage(configurations: list[Configuration], target: str) -> dict:
    """A family-injection run: of the configurations whose baseline has the target's kernel families (an eager
    configuration has no flash-attn kernels to slow), how many failed with a kernel regression, how many of those
    named the target's families and no other, how many had their step's GPU time move by less than 2%, and each
    target family's change against the GPU's pace and its threshold."""
    families = set(KERNEL_TARGETS[target].values())
    applicable = [c for c in configurations
                  if c.baseline is not None and any((c.baseline.gpu_minutes_by_family or {}).get(f) for f in families)]
    named = {c.key: set(c.verdict.worse_families) if c.verdict else set() for c in applicable}
    step = _changes(applicable, SPEED_METRICS["gpu"])
    return {"families": sorted(families),
            "flagged": sum(c.verdict is not None and "kernel" in c.verdict.kinds for c in applicable),
            "named_right": sum(bool(n) and n <= families for n in named.values()),
            "step_under_2pct": sum(v is not None and v < 2 for v in step.values()),
            "verdicts": _labels(applicable), "gpu_time_change_pct": step,
            "family_change_pct": {c.key: {f.family: {"change_pct": _rounded(f.change_pct),
                                                     "threshold_pct": _rounded(f.threshold_pct), "basis": f.basis}
                                          for f in c.verdict.families if f.family in families}
                                  for c in applicable if c.verdict is not None},
            "not_applicable": sorted(c.key for c in configurations if c not in applicable),
            "configurations": sorted(c.key for c in applicable)}


def memory_stage(configurations: list[Configuration], category: str) -> dict:
    """A memory-category run: how many configurations failed with a memory regression, how many of those had the
    target category grow most at the peak, and each one's growth of max allocated and of each category."""
    flagged = [c for c in configurations if c.verdict is not None and "memory" in c.verdict.kinds]
    return {"category": category, "flagged": len(flagged),
            "named_right": sum(_grew_most(c.verdict) == category for c in flagged),
            "verdicts": _labels(configurations),
            "max_allocated_change_pct": _changes(configurations, "max_allocated_mib"),
            "category_change_mib": {c.key: {m.category: round(m.after_mib - m.before_mib, 1) for m in c.verdict.memory}
                                    for c in configurations if c.verdict is not None}}


def _grew_most(verdict) -> str | None:
    """The category of tensors that moved most at the peak: the allocator's slack, which the new blocks move too, is
    not one (records made before verdicts.category_moves put it last may list it first)."""
    return next((move.category for move in verdict.memory if move.category != SLACK), None)


def markdown(summary: dict) -> str:
    """A short page of the self-test: what was run, and how many configurations each stage flagged."""
    lines = [f"# sftbench self-test: {summary['gpu']}", "",
             (f"torch {summary['versions'].get('torch')}, transformers {summary['versions'].get('transformers')}, "
              f"flash-attn {summary['versions'].get('flash-attn')}, driver {summary['driver']}; made from "
              f"{len(summary['records'])} run records."), "",
             "| run | commit | flagged | of | verdicts |", "|---|---|---|---|---|"]
    for i, rerun in enumerate(summary["clean_reruns"], 1):
        twice = len(rerun.get("remeasured", {}))  # summaries of runs before re-measuring have none
        lines.append(f"| clean rerun {i} ({rerun['started'][:16]}) | {rerun['commit']} | "
                     f"{failures(rerun['failures'])}{f' ({twice} measured twice)' if twice else ''} | "
                     f"{len(rerun['configurations'])} | {_counts(rerun['verdicts'])} |")
    for knob, stage in summary["family_injected"].items():
        lines.append(f"| {KERNELS}={knob} | {stage['commit']} | {stage['flagged']} ({stage['named_right']} naming "
                     f"{' and '.join(stage['families'])}; {stage['step_under_2pct']} with the step under 2%) | "
                     f"{len(stage['configurations'])} | {_counts(stage['verdicts'])} |")
    for knob, stage in summary["memory_injected"].items():
        lines.append(f"| {MEMORY_IN}={knob} | {stage['commit']} | {stage['flagged']} ({stage['named_right']} with "
                     f"{stage['category']} grown most) | {len(stage['configurations'])} | {_counts(stage['verdicts'])} |")
    for name, stage in summary["injected"].items():
        lines.append(f"| {name} ({', '.join(f'{k}={v}' for k, v in stage['knobs'].items())}) | {stage['commit']} | "
                     f"{stage['flagged']} | {len(stage['configurations'])} | {_counts(stage['verdicts'])} |")
    lines += _memory_moves(summary["memory_injected"])
    reruns = summary["clean_reruns"]
    if reruns:
        lines += ["", ("Per configuration, against its baseline: GPU-minutes and wall minutes (%), the host's own "
                       "pace between timed steps (%, a burst of kernel launches; where recorded), and the family "
                       "nearest its threshold (change against the GPU's pace / threshold, %)."), "",
                  "| configuration | " + " | ".join(f"clean {i}" for i in range(1, len(reruns) + 1)) + " |",
                  "|---|" + "---|" * len(reruns)]
    for key in sorted({k for rerun in reruns for k in rerun["configurations"]}):
        cells = []
        for rerun in reruns:
            nearest = rerun["nearest_family"].get(key)
            family = "" if nearest is None else \
                f"; {nearest['family']} {nearest['change_pct']:+.2f} / {nearest['threshold_pct']:g}"
            host = rerun["host_pace_change_pct"].get(key)
            host = "" if host is None else f" (host {_pct(host)})"
            cells.append(f"{_pct(rerun['gpu_time_change_pct'].get(key))} / "
                         f"{_pct(rerun['wall_time_change_pct'].get(key))}{host}{family}")
        lines.append(f"| `{key}` | " + " | ".join(cells) + " |")
    for i, rerun in enumerate(reruns, 1):
        for key, detail in rerun.get("remeasured", {}).items():
            lines += ["", f"Clean rerun {i}, `{key}`: {render.note_text(Note('re-measured', detail))}."]
    moves = [(abs(change), key) for rerun in reruns for key, change in rerun["wall_time_change_pct"].items()
             if change is not None]
    moves += [(abs(detail["change_pct"]), key) for rerun in reruns  # a first measurement moved it too
              for key, detail in rerun.get("remeasured", {}).items()]
    if moves:
        largest, key = max(moves)
        lines += ["", (f"Wall time of the clean reruns moved by up to {largest:.1f}% against its baseline (`{key}`): "
                       "on this host a `--sftbench-time-tolerance` under that fails clean reruns.")]
    return "\n".join(lines) + "\n"


def failures(count: int) -> str:
    """"1 failure", "2 failures": the clean reruns' failures as the summary and its page say them."""
    return f"{count} failure{'' if count == 1 else 's'}"


def _memory_moves(stages: dict) -> list[str]:
    """Per configuration and memory knob: max allocated's change and each category's at the peak (MiB)."""
    if not stages:
        return []
    intro = "Per configuration, against its baseline: max allocated (%) and the categories that moved at the peak (MiB)."
    lines = ["", intro, "", "| configuration | " + " | ".join(f"{MEMORY_IN}={knob}" for knob in stages) + " |",
             "|---|" + "---|" * len(stages)]
    for key in sorted({k for stage in stages.values() for k in stage["configurations"]}):
        cells = [f"{_pct(stage['max_allocated_change_pct'].get(key))}: " + ", ".join(
                     f"{category} {mib:+.0f}" for category, mib in sorted(  # tensors first, slack last, as verdicts do
                         stage["category_change_mib"].get(key, {}).items(), key=lambda item: item[0] == SLACK))
                 for stage in stages.values()]
        lines.append(f"| `{key}` | " + " | ".join(cells) + " |")
    return lines


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _counts(verdicts: dict[str, str]) -> str:
    values = list(verdicts.values())
    return ", ".join(f"{values.count(v)} {v}" for v in dict.fromkeys(values))


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value:+.2f}"
