"""python -m sftbench history: the run records of a results/history folder as trends, and the newest run
as a job summary.

Each pytest run of the benchmarks writes one run record (sftbench.recorder, sftbench.storage.records): when
it ran, the commit, GPU and stack, and per configuration its verdict and metrics beside its baseline's.
This module reads those records without torch: the page lists the runs and, per configuration, its
values per run with a PNG of GPU-minutes, wall minutes and max reserved memory over the runs, the
baseline drawn as a line; the summary puts the newest run's regressions first, then its improvements.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from datetime import datetime
from pathlib import Path

from sftbench import render
from sftbench.environment import gpu_slug
from sftbench.result import Metrics
from sftbench.storage.records import Configuration, RunRecord, read_records

# The packages a run's stack is named by, where installed.
STACK = ("torch", "transformers", "peft", "accelerate", "flash-attn", "bitsandbytes", "gptqmodel", "optimum")
# What is drawn and tabled per configuration: (metric of the record, column title, divisor to the plotted unit).
TRENDS = (("gpu_minutes_per_1000_samples", "GPU-minutes per 1000 samples", 1),
          ("minutes_per_1000_samples", "wall minutes per 1000 samples", 1),
          ("max_reserved_mib", "GPU memory: max reserved (GiB)", 1024))
VERDICT_COLORS = {"regression": "tab:red", "improvement": "tab:green", "pass": "tab:blue"}
MAX_TICKS = 12  # labelled runs on a plot's x axis; more runs label every k-th


def records_of(folder: Path) -> tuple[list[RunRecord], list[str]]:
    """(the run records of `folder`, oldest first; one line per file that could not be read)."""
    records, problems = read_records([folder])
    return [record for _, record in records], [f"skipped {problem}" for problem in problems]


def runs(records: list[RunRecord]) -> list[RunRecord]:
    """The records as runs, oldest first: the records of the parts of one run merged into one, their
    configurations together. Parts are of one commit, GPU model and settings, each with its own configurations,
    and either overlap in time (one pytest process per GPU) or follow one another as the shards I/N of one
    selection (`--sftbench-shard`, one after another on one host). Runs made side by side with other settings
    stay apart."""
    merged: list[RunRecord] = []
    shards: list[set[str | None]] = []  # the shards each merged run holds
    for record in sorted(records, key=lambda r: r.started):
        last = merged[-1] if merged else None
        if last and _same_stack(last, record) \
                and not {c.key for c in record.configurations} & {c.key for c in last.configurations} \
                and (record.started < last.finished or _another_shard(shards[-1], record.shard)):
            merged[-1] = dataclasses.replace(
                last, finished=max(last.finished, record.finished),
                configurations=last.configurations + record.configurations,
                lost_parts=last.lost_parts + record.lost_parts,
                shard=last.shard if last.shard == record.shard else None)  # shards together: no longer one shard
            shards[-1].add(record.shard)
        else:
            merged.append(record)
            shards.append({record.shard})
    return merged


def _another_shard(held: set[str | None], shard: str | None) -> bool:
    """Whether `shard` (I/N) is one the run does not hold yet, of the same N as those it holds."""
    if shard is None or None in held or shard in held:
        return False
    return {s.partition("/")[2] for s in held} == {shard.partition("/")[2]}


def _same_stack(a: RunRecord, b: RunRecord) -> bool:
    return (a.commit, a.gpu, a.update_baselines, a.machine.get("settings"), a.versions) == \
        (b.commit, b.gpu, b.update_baselines, b.machine.get("settings"), b.versions)


def trends(all_runs: list[RunRecord]) -> dict[tuple[str, str], list[tuple[int, Configuration]]]:
    """{(GPU, configuration key): [(run number, the configuration's entry in that run)]}, in run order."""
    found: dict[tuple[str, str], list[tuple[int, Configuration]]] = {}
    for number, run in enumerate(all_runs, start=1):
        for configuration in run.configurations:
            found.setdefault((run.gpu, configuration.key), []).append((number, configuration))
    return found


def page(all_runs: list[RunRecord], plots_dir: Path | None = None) -> str:
    """The history page's Markdown; each configuration's PNG is written to plots_dir where given."""
    lines = ["# sftbench run history", "",
             f"{len(all_runs)} runs, {when(all_runs[0])} to {when(all_runs[-1])} (UTC).", "",
             "## Runs", "",
             "| run | started (UTC) | commit | GPU | stack | mode, settings | verdicts |", "|---|---|---|---|---|---|---|"]
    for number, run in enumerate(all_runs, start=1):
        machine = run.machine
        gpu = ", ".join(str(v) for v in (run.gpu, machine.get("driver") and f"driver {machine['driver']}",
                                         machine.get("cuda") and f"CUDA {machine['cuda']}") if v)
        lines.append(f"| {number} | {when(run)} | {run.commit or '?'} | {gpu} | {stack(run)} | "
                     f"{run.mode}{' (baselines written)' if run.update_baselines else ''}"
                     f"{''.join(f', {k}={v}' for k, v in sorted((machine.get('settings') or {}).items()))} | "
                     f"{verdict_counts(run.configurations)}{lost_text(run)} |")
    for (gpu, key), entries in sorted(trends(all_runs).items()):
        lines += ["", f"## {key}", "", f"{gpu}; rows: " + ", ".join(entries[-1][1].rows), ""]
        if plots_dir is not None:
            path = plot(key, gpu, entries, all_runs, plots_dir)
            lines += [f"![{key}: GPU-minutes, wall minutes and memory per run]"
                      f"({path.relative_to(plots_dir.parent).as_posix()})", ""]
        lines += ["| run | started (UTC) | commit | verdict | " + " | ".join(
                      ("GPU-min", "wall min", "max reserved MiB")) + " |",
                  "|---|---|---|---|---|---|---|"]
        for number, configuration in entries:
            run = all_runs[number - 1]
            values = " | ".join(number_text(getattr(configuration.now, metric)) for metric, _, _ in TRENDS)
            lines.append(f"| {number} | {when(run)} | {run.commit or '?'} | {render.status(configuration)} | "
                         f"{values} |")
        number, last = entries[-1]
        if last.baseline is not None:
            values = " | ".join(number_text(getattr(last.baseline, metric)) for metric, _, _ in TRENDS)
            lines.append(f"| baseline | | | as of run {number} | {values} |")
    return "\n".join(lines) + "\n"


def summary(run: RunRecord) -> str:
    """The run's Markdown for a CI job summary: regressions first, then improvements, then the rest."""
    configurations = run.configurations
    lines = [f"## sftbench: {when(run)} UTC, commit {run.commit or '?'}, {run.gpu}", "",
             f"{verdict_counts(configurations)}{lost_text(run)}. Stack: {stack(run)}.", ""]
    if run.interrupted:
        lines += [f"The run was interrupted; baselines it rewrote: {', '.join(run.baselines_written) or 'none'}.", ""]
    if unjudged := render.wall_not_judged(configurations):
        lines += [(f"Wall time not judged in {unjudged} of {len(configurations)} configurations: their baselines "
                   "ran on another host or do not name theirs."), ""]
    if across := render.across_gpu_models(configurations):
        lines += [across[0].upper() + across[1:] + ".", ""]
    for verdict, title in (("regression", "Regressions"), ("improvement", "Improvements")):
        chosen = [c for c in configurations if c.status == verdict]
        if chosen:
            lines += [f"### {title}", ""]
            for c in chosen:
                lines += [f"- **{name(c)}**: {render.status(c)} (`{c.key}`)", "", "  ```",
                          *(f"  {line}" for line in render.explain(c.verdict)), "  ```", ""]
    rest = [c for c in configurations if c.status not in ("regression", "improvement")]
    if rest:
        lines += ["### The other configurations", "",
                  "| configuration | verdict | GPU-min | wall min | max reserved MiB |", "|---|---|---|---|---|"]
        for c in rest:
            values = " | ".join(now_and_baseline(c, metric) for metric, _, _ in TRENDS)
            lines.append(f"| {name(c)} | {render.status(c)} | {values} |")
    return "\n".join(lines).rstrip() + "\n"


# Where a case's time goes (Configuration.overhead), in the order it is spent; set-up holds the model's build.
# Records written before 2026-12-07 traced separate steps after the timed ones ("traced steps"), then the family
# repeats, and had no counted step; now only a full epoch traces its repeats apart ("family repeats").
PHASES = {"set-up": "setup_s", "warm-up": "warmup_s", "timed steps": "timed_steps_s", "counted step": "counted_step_s",
          "traced steps": "kernel_steps_s", "family repeats": "kernel_repeats_s",
          "reading CUPTI's records": "kernel_read_s",
          "repeats and reading": "kernel_trace_s",  # both, in records written before 2026-12-06
          "memory by category": "memory_categories_s"}


def cost(run: RunRecord) -> str:
    """The run's Markdown of where each configuration's time went, phase by phase: the case's own phases, the rest of
    the case, the launcher's share (process start, the result's way back) and writing its result file; summed."""
    columns = [phase for phase, key in PHASES.items() if any(key in c.overhead for c in run.configurations)]
    head = ["configuration", "wall", *columns, "rest of the case", "launcher", "writing"]
    lines = [f"## Where the time went: {when(run)} UTC, commit {run.commit or '?'}, {run.gpu}", "",
             "Seconds per configuration (`overhead` of the run record).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    totals = [0.0] * (len(head) - 1)
    for c in run.configurations:
        o = c.overhead
        phases = [o.get(PHASES[phase]) for phase in columns]
        case_s, wall_s = o.get("case_s"), o.get("wall_s")
        rest = None if case_s is None else case_s - sum(p or 0.0 for p in phases)
        launcher = None if None in (case_s, wall_s) else wall_s - case_s
        values = [wall_s, *phases, rest, launcher, o.get("write_s")]
        totals = [t + (v or 0.0) for t, v in zip(totals, values)]
        lines.append(f"| {name(c)} | " + " | ".join("" if v is None else f"{v:.1f}" for v in values) + " |")
    lines.append("| all | " + " | ".join(f"{t:.1f}" for t in totals) + " |")
    if totals[0]:
        lines.append("| share | | " + " | ".join(f"{100 * t / totals[0]:.0f}%" for t in totals[1:]) + " |")
    return "\n".join(lines) + "\n"


def side_by_side(run: RunRecord, other: RunRecord) -> str:
    """The run's Markdown beside another of the same configurations (a pytest-xdist run beside one process, two
    hosts): per configuration both verdicts, GPU-minutes and memory, then how many agree."""
    mine, theirs = ({c.key: c for c in r.configurations} for r in (run, other))
    title = (f"## {when(run)} UTC ({run.commit or '?'}, {run.gpu}) beside {when(other)} UTC "
             f"({other.commit or '?'}, {other.gpu})")
    head = ["configuration", "verdict", "beside", "GPU-min", "beside", "change", "max reserved MiB", "beside",
            "max allocated MiB", "beside"]
    lines = [title, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    both = [key for key in mine if key in theirs]
    changes = []
    for key in both:
        a, b = mine[key], theirs[key]
        gpu = [c.now.gpu_minutes_per_1000_samples for c in (a, b)]
        change = None if None in gpu or not gpu[1] else 100 * (gpu[0] / gpu[1] - 1)
        changes += [] if change is None else [change]
        memory = [number_text(getattr(c.now, metric)) for metric in ("max_reserved_mib", "max_allocated_mib")
                  for c in (a, b)]
        lines.append(f"| {name(a)} | {render.status(a)} | {render.status(b)} | {number_text(gpu[0])} | "
                     f"{number_text(gpu[1])} | {'' if change is None else f'{change:+.2f}%'} | " + " | ".join(memory) + " |")
    same_verdict = sum(render.status(mine[k]) == render.status(theirs[k]) for k in both)
    same_memory = sum(all(round(getattr(mine[k].now, m) or 0) == round(getattr(theirs[k].now, m) or 0)
                          for m in ("max_reserved_mib", "max_allocated_mib")) for k in both)
    spread = f"GPU-minutes {min(changes):+.2f}% to {max(changes):+.2f}%" if changes else "no GPU-minutes on both"
    agree = (f"{len(both)} configurations in both: verdicts identical in {same_verdict}, memory identical to the MiB "
             f"in {same_memory}, {spread}.")
    lines += ["", agree]
    only = [f"only in the first: {', '.join(k for k in mine if k not in theirs)}" if set(mine) - set(theirs) else "",
            f"only beside: {', '.join(k for k in theirs if k not in mine)}" if set(theirs) - set(mine) else ""]
    lines += [line[0].upper() + line[1:] + "." for line in only if line]
    return "\n".join(lines) + "\n"


def name(configuration: Configuration) -> str:
    """The configuration by its first row's test id, and how many other rows it stands for."""
    rows = configuration.rows or [configuration.key]
    return rows[0] + (f" (+{len(rows) - 1} rows)" if len(rows) > 1 else "")


def now_and_baseline(configuration: Configuration, metric: str) -> str:
    now = number_text(getattr(configuration.now, metric))
    baseline = None if configuration.baseline is None else getattr(configuration.baseline, metric)
    return now if baseline is None else f"{now} (baseline {number_text(baseline)})"


def when(run: RunRecord) -> str:
    return datetime.fromisoformat(run.started).strftime("%Y-%m-%d %H:%M")


def stack(run: RunRecord) -> str:
    versions = run.versions
    return ", ".join(f"{package} {versions[package]}" for package in STACK if versions.get(package)) or "unknown"


def verdict_counts(configurations: list[Configuration]) -> str:
    counts = Counter(c.status for c in configurations)
    return ", ".join(f"{n} {status}" for status, n in counts.most_common()) or "no configurations"


def lost_text(run: RunRecord) -> str:
    """'; incomplete: <part> ended without its report' for each part the run lost (a crashed pytest-xdist worker)."""
    return "".join(f"; incomplete: {part} ended without its report" for part in run.lost_parts)


def number_text(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"


def plot(key: str, gpu: str, entries: list[tuple[int, Configuration]], all_runs: list[RunRecord],
         plots_dir: Path) -> Path:
    """One configuration's PNG: a panel per trend over the runs, each point coloured by its verdict, each
    run's baseline a dashed line (flat while the baseline stays); returns its path."""
    # A bare Figure renders with the Agg canvas: no pyplot, no global backend state.
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    numbers = [number for number, _ in entries]
    figure = Figure(figsize=(17, 4), layout="constrained")
    *panels, by_family = figure.subplots(1, len(TRENDS) + 1)
    for axes, (metric, title, divisor) in zip(panels, TRENDS):
        now = [_scaled(getattr(c.now, metric), divisor) for _, c in entries]
        baseline = [_scaled(getattr(_baseline(c), metric), divisor) for _, c in entries]
        axes.plot(numbers, baseline, "--", color="grey", drawstyle="steps-mid")
        axes.plot(numbers, now, "-", color="lightsteelblue", zorder=1)
        axes.scatter(numbers, now, c=[_color(c.status) for _, c in entries], zorder=2)
        if all(math.isnan(v) for v in now):
            axes.text(0.5, 0.5, "not recorded\n(CPU runs, or baselines older than the GPU clock)",
                      transform=axes.transAxes, ha="center", va="center", color="grey")
        axes.set_title(title, fontsize="medium")
        axes.set_ylim(bottom=0, top=max([v for v in now + baseline if not math.isnan(v)], default=1) * 1.15)
        axes.grid(alpha=0.3)
    _family_panel(by_family, entries, numbers)
    step = math.ceil(len(numbers) / MAX_TICKS)
    shown = numbers[::step]
    for axes in (*panels, by_family):
        axes.set_xticks(shown, [f"{datetime.fromisoformat(all_runs[n - 1].started):%m-%d}\n"
                                f"{all_runs[n - 1].commit or '?'}" for n in shown], fontsize="small")
        axes.set_xlim(numbers[0] - 0.5, numbers[-1] + 0.5)
    verdicts = dict.fromkeys(c.status for _, c in entries)
    handles = [Line2D([], [], marker="o", linestyle="", color=_color(v), label=v) for v in verdicts]
    handles.append(Line2D([], [], linestyle="--", color="grey", label="baseline"))
    figure.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize="small")
    figure.suptitle(f"{key} on {gpu}: per run (date, commit)", fontsize="medium")
    path = plots_dir / gpu_slug(gpu) / f"{key}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    return path


def _family_panel(axes, entries: list[tuple[int, Configuration]], numbers: list[int]) -> None:
    """GPU-minutes per 1000 samples of each run, stacked by kernel family (runs from before families: none)."""
    from sftbench.report.plots import family_colors

    bottom = [0.0] * len(entries)
    for family, color in family_colors().items():
        heights = [(c.now.gpu_minutes_by_family or {}).get(family, 0.0) for _, c in entries]
        if any(heights):
            axes.bar(numbers, heights, bottom=bottom, color=color, label=family, width=0.7)
            bottom = [b + h for b, h in zip(bottom, heights)]
    if any(bottom):
        axes.legend(fontsize="x-small", loc="lower left")
    else:
        axes.text(0.5, 0.5, "no kernel families recorded\n(runs from before sftbench recorded them)",
                  transform=axes.transAxes, ha="center", va="center", color="grey")
    axes.set_title("GPU-minutes by kernel family", fontsize="medium")
    axes.grid(alpha=0.3, axis="y")


def _baseline(configuration: Configuration) -> Metrics:
    """The baseline a configuration was judged against; a run that wrote the baselines is its own."""
    if configuration.status == "baseline written":
        return configuration.now
    return configuration.baseline or Metrics()


def _scaled(value: float | None, divisor: int) -> float:
    return math.nan if value is None else value / divisor


def _color(verdict: str) -> str:
    return VERDICT_COLORS.get(verdict, "grey")
