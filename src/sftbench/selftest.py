"""The self-test: does the suite flag what it should, and only that, on a real GPU host?

A self-test is a set of ordinary benchmark runs of one selection of rows, against baselines written
for it: clean reruns (nothing changed: no row may fail), a run with SFTBENCH_INJECT_GPU_PCT and
SFTBENCH_INJECT_MEMORY_PCT (every configuration must show a kernel and a memory regression), and a run
with SFTBENCH_INJECT_HOST_MS (a host-side regression, or within the wall-time noise band where that
band is wider: the summary says which). See sftbench.injection for the knobs.

`python -m sftbench selftest --run -k SELECTION -- [pytest args]` makes the runs; `python -m sftbench
selftest RECORD...` summarizes run records (each run's <results>/history/*.json) into one JSON.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from sftbench.history import BadRecord, read_record
from sftbench.injection import (
    GPU_PCT,
    HOST_MS,
    KERNEL_TARGETS,
    KERNELS,
    MEMORY_PCT,
    injected,
)

# Stage name -> the knobs it sets; "update" writes the baselines.
STAGES = {
    "update": {},
    "clean1": {},
    "clean2": {},
    "gpu5-memory3": {GPU_PCT: "5", MEMORY_PCT: "3"},
    "host60ms": {HOST_MS: "60"},
    "attention10": {KERNELS: "attention:10"},
    "gemm5": {KERNELS: "gemm:5"},
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


def _change_pct(configuration: dict, metric: str) -> float | None:
    now, baseline = configuration["now"].get(metric), (configuration.get("baseline") or {}).get(metric)
    return None if now is None or not baseline else round(100 * (now / baseline - 1), 2)


def _changes(configurations: list[dict], metric: str) -> dict[str, float | None]:
    return {c["key"]: _change_pct(c, metric) for c in configurations}


def summarize(records: list[dict]) -> dict:
    """One JSON of the self-test from its comparing runs' records (baseline-writing runs are left out): the newest
    run's commit, GPU and stack; each clean rerun and family injection with its own start and commit."""
    comparing = sorted((r for r in records if not r.get("update_baselines")), key=lambda r: r["started"], reverse=True)
    if not comparing:
        raise ValueError("no comparing run among the records")
    clean = [r for r in comparing if not injected(r.get("settings", {}))]
    keys = sorted({c["key"] for r in comparing for c in r["configurations"]})
    summary = {
        "commit": comparing[0]["commit"], "gpu": comparing[0]["gpu"], "driver": comparing[0]["driver"],
        "versions": comparing[0]["versions"], "configurations": len(keys),
        "rows": sorted({row for r in comparing for c in r["configurations"] for row in c["rows"]}),
        "clean_reruns": [{
            "started": r["started"], "commit": r["commit"], "failures": sum(c["verdict"] == "regression" for c in r["configurations"]),
            "verdicts": {c["key"]: c["label"] for c in r["configurations"]},
            "gpu_time_change_pct": _changes(r["configurations"], SPEED_METRICS["gpu"]),
            "wall_time_change_pct": _changes(r["configurations"], SPEED_METRICS["wall"]),
            "max_reserved_change_pct": _changes(r["configurations"], "max_reserved_mib"),
        } for r in clean],
        "injected": {},
    }
    for record in comparing:
        knobs = {name: record["settings"][name] for name in injected(record.get("settings", {}))}
        configurations = record["configurations"]
        labels = {c["key"]: c["label"] for c in configurations}
        if GPU_PCT in knobs:
            summary["injected"][f"gpu_time_{knobs[GPU_PCT]}pct"] = {
                "knobs": knobs, "of": len(configurations),
                "flagged": sum("kernel" in label for label in labels.values()),
                "kind": sorted(set(labels.values())), "verdicts": labels,
                "gpu_time_change_pct": _changes(configurations, SPEED_METRICS["gpu"])}
        if MEMORY_PCT in knobs:
            summary["injected"][f"memory_{knobs[MEMORY_PCT]}pct"] = {
                "knobs": knobs, "of": len(configurations),
                "flagged": sum("memory" in label for label in labels.values()), "verdicts": labels,
                **{f"{metric}_change_pct": _changes(configurations, metric) for metric in MEMORY_METRICS}}
        if KERNELS in knobs:
            target = knobs[KERNELS].partition(":")[0]
            summary.setdefault("family_injected", {}).setdefault(knobs[KERNELS], {  # the newest run of a knob
                "started": record["started"], "commit": record["commit"], **family_stage(configurations, target)})
        if HOST_MS in knobs:
            host_side = sum("host-side" in label for label in labels.values())
            summary["injected"]["host_time"] = {
                "knobs": knobs, "of": len(configurations), "flagged": host_side,
                "within_noise": len(configurations) - host_side, "verdicts": labels,
                "wall_time_change_pct": _changes(configurations, SPEED_METRICS["wall"]),
                "gpu_time_change_pct": _changes(configurations, SPEED_METRICS["gpu"])}
    return summary


def family_stage(configurations: list[dict], target: str) -> dict:
    """A family-injection run: of the configurations whose baseline has the target's kernel families (an eager
    configuration has no flash-attn kernels to slow), how many failed with a kernel regression, how many of those
    named the target's families and no other, and how many had their step's GPU time move by less than 2%."""
    families = set(KERNEL_TARGETS[target].values())
    applicable = [c for c in configurations
                  if any(((c.get("baseline") or {}).get("gpu_minutes_by_family") or {}).get(f) for f in families)]
    named = {c["key"]: set(re.findall(r"kernel \(([^)]*)\)", c["label"])[0].split(", "))
             if "kernel (" in c["label"] else set() for c in applicable}
    step = _changes(applicable, SPEED_METRICS["gpu"])
    return {"families": sorted(families), "configurations": len(applicable),
            "flagged": sum("kernel" in c["label"] for c in applicable),
            "named_right": sum(bool(n) and n <= families for n in named.values()),
            "step_under_2pct": sum(v is not None and v < 2 for v in step.values()),
            "verdicts": {c["key"]: c["label"] for c in applicable}, "gpu_time_change_pct": step,
            "not_applicable": sorted(c["key"] for c in configurations if c not in applicable)}


def markdown(summary: dict) -> str:
    """A short page of the self-test: what was run, and how many configurations each stage flagged."""
    lines = [f"# sftbench self-test: {summary['gpu']}, commit {summary['commit']}", "",
             f"{summary['configurations']} configurations ({len(summary['rows'])} rows), torch "
             f"{summary['versions'].get('torch')}, transformers {summary['versions'].get('transformers')}, "
             f"driver {summary['driver']}.", "",
             "| run | flagged | of | verdicts |", "|---|---|---|---|"]
    for i, rerun in enumerate(summary["clean_reruns"], 1):
        lines.append(f"| clean rerun {i} | {rerun['failures']} failures | {len(rerun['verdicts'])} | "
                     f"{_counts(rerun['verdicts'])} |")
    for knob, stage in summary.get("family_injected", {}).items():
        lines.append(f"| {KERNELS}={knob} | {stage['flagged']} ({stage['named_right']} naming "
                     f"{' and '.join(stage['families'])}; {stage['step_under_2pct']} with the step under 2%) | "
                     f"{stage['configurations']} | {_counts(stage['verdicts'])} |")
    for name, stage in summary["injected"].items():
        lines.append(f"| {name} ({', '.join(f'{k}={v}' for k, v in stage['knobs'].items())}) | {stage['flagged']} | "
                     f"{stage['of']} | {_counts(stage['verdicts'])} |")
    lines += ["", "Per configuration, change against its baseline (%): GPU-minutes / wall minutes.", "",
              "| configuration | " + " | ".join(f"clean {i}" for i in range(1, len(summary["clean_reruns"]) + 1))
              + " | GPU injected | host injected |", "|---|" + "---|" * (len(summary["clean_reruns"]) + 2)]
    gpu_stage = next((s for n, s in summary["injected"].items() if n.startswith("gpu_time")), {})
    host_stage = summary["injected"].get("host_time", {})
    for key in sorted({k for rerun in summary["clean_reruns"] for k in rerun["verdicts"]}):
        cells = [f"{_pct(r['gpu_time_change_pct'].get(key))} / {_pct(r['wall_time_change_pct'].get(key))}"
                 for r in summary["clean_reruns"]]
        cells.append(_pct(gpu_stage.get("gpu_time_change_pct", {}).get(key)))
        cells.append(f"{_pct(host_stage.get('wall_time_change_pct', {}).get(key))} "
                     f"({host_stage.get('verdicts', {}).get(key, '')})")
        lines.append(f"| `{key}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _counts(verdicts: dict[str, str]) -> str:
    values = list(verdicts.values())
    return ", ".join(f"{values.count(v)} {v}" for v in dict.fromkeys(values))


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value:+.1f}"


def read_records(paths: list[Path]) -> list[dict]:
    """Run records from files or folders of them (a folder: every *.json in it); BadRecord naming a file that
    is not one."""
    files = [f for p in paths for f in (sorted(Path(p).glob("*.json")) if Path(p).is_dir() else [Path(p)])]
    records = []
    for file in files:
        try:
            records.append(read_record(file))
        except BadRecord as error:
            raise BadRecord(f"{file}: {error}") from None
    return records
