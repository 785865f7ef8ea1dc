"""PNG plots of the seed's sweeps: memory and minutes per row, the seed's beside this run's, and this run's
GPU kernel minutes where its results have them.

The seed is ms-swift's training benchmark (Dec 2023), whose tables sftbench reproduces.
"""

from __future__ import annotations

import math
from pathlib import Path

from sftbench import kernels
from sftbench.catalog import Row, Table
from sftbench.report.values import (
    SEED_GPU_MIB,
    column_text,
    numeric_column,
    run_value,
    seed_value,
    sweeps,
)
from sftbench.result import MEMORY_CATEGORIES, SLACK, Result, minutes_per_1000_samples

# Tables that get a plot, and how: "lines" along the table's numeric column, per model; "bars" per row.
PLOTS = {"lora_max_length": "lines", "full_max_length": "lines", "batch_size": "lines",
         "lora_rank_targets": "bars"}
# Each plot's two panels: (metric, divisor to the plotted unit, decimals of a bar's label); memory in GiB.
PANELS = (("MiB", 1024, 1), ("min", 1, 2))
GPU_KERNELS = "this run, GPU kernels"  # the label of this run's GPU-minutes, the minutes panel's own legend


def plot(t: Table, results: dict[str, Result], plots_dir: Path) -> list[str]:
    """Write the table's plot and return the Markdown that links it; nothing for a table that gets no plot
    or has no results."""
    if t.name not in PLOTS or not any(row.spec.key in results for row in t.rows):
        return []
    # A bare Figure renders with the Agg canvas: no pyplot, no global backend state.
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4.4), layout="constrained")
    memory, minutes = figure.subplots(1, 2)
    if PLOTS[t.name] == "lines":
        _lines(t, results, memory, minutes)
    else:
        _bars(t, results, memory, minutes)
    gpu = next(iter(results.values())).machine.get("gpu")
    figure.suptitle(f"{t.title}: seed (A100 80GB) vs this run ({gpu})")
    memory.set_title("GPU memory: max reserved (GiB)")
    minutes.set_title("minutes per 1000 samples\n(seed: whole run, ours: training)")
    for axes in (memory, minutes):
        axes.set_ylim(bottom=0)
        axes.grid(alpha=0.3)
    plots_dir.mkdir(parents=True, exist_ok=True)
    figure.savefig(plots_dir / f"{t.name}.png", dpi=100)
    return [f"![{t.title}: memory and time, seed vs this run]({plots_dir.name}/{t.name}.png)", ""]


def _plotted(values: list[float | None], divisor: int) -> list[float]:
    return [math.nan if v is None else v / divisor for v in values]


def _lines(t: Table, results: dict[str, Result], memory, minutes) -> None:
    """One colour per model along the table's numeric column: the seed dashed, this run solid, this run's
    GPU-minutes dotted (where it has them)."""
    axis = numeric_column(t)
    ticks = sorted({getattr(row.spec, axis) for row in t.rows})
    shown = [sweep for sweep in sweeps(t, axis) if any(row.spec.key in results for row in sweep)]
    for i, sweep in enumerate(shown):
        color = f"C{i % 10}"
        xs = [getattr(row.spec, axis) for row in sweep]
        runs = [results.get(row.spec.key) for row in sweep]
        name = " ".join(column_text(sweep[0], c) for c in t.columns if c != axis)
        gpu_minutes = _gpu_minutes(runs)
        for axes, (metric, divisor, _) in zip((memory, minutes), PANELS):
            lines = [([seed_value(row, metric) for row in sweep], "--o", "white", "seed"),
                     ([run_value(r, metric) for r in runs], "-o", color, "this run")]
            if metric == "min" and gpu_minutes:
                lines.append((gpu_minutes, ":^", color, GPU_KERNELS))
            for values, style, face, source in lines:
                known = [(x, v / divisor) for x, v in zip(xs, values) if v is not None]  # a line over the gaps
                axes.plot([x for x, _ in known], [v for _, v in known], style, color=color, mfc=face,
                          label=f"{name}, {source}")
        _mark_ooms(memory, xs, sweep, runs, color, first=ticks[0])
    for axes in (memory, minutes):
        axes.set_xscale("log", base=2)
        axes.set_xticks(ticks, minor=False)
        axes.xaxis.set_major_formatter("{x:.0f}")
        axes.set_xlabel(axis)
    memory.legend(fontsize="small")
    if gpu_lines := [line for line in minutes.get_lines() if line.get_label().endswith(GPU_KERNELS)]:
        minutes.legend(handles=gpu_lines, fontsize="small")


def _gpu_minutes(runs: list[Result | None]) -> list[float | None]:
    """This run's GPU-minutes per row; empty where no row has them (results without the GPU clock)."""
    values = [run_value(r, "GPU min") for r in runs]
    return values if any(v is not None for v in values) else []


def _mark_ooms(memory, xs: list[int], sweep: list[Row], runs: list[Result | None], color: str, first: int) -> None:
    """An OOM stands at its card's memory, marked ×; the seed's 80 GB is drawn where the seed ran out.
    Labels sit left of the mark, except at the axis's first x, where they would leave the plot."""
    for x, row, result in zip(xs, sweep, runs):
        side = "left" if x == first else "right"
        if row.seed_outcome == "oom":
            memory.axhline(SEED_GPU_MIB / 1024, color="grey", linestyle=":", linewidth=1)
            _oom(memory, x, SEED_GPU_MIB, "seed OOM (A100 80GB)", color, side)
        if result is not None and result.outcome == "oom" and result.machine.get("gpu_memory_mib"):
            _oom(memory, x, result.machine["gpu_memory_mib"], "OOM", color, side)


def _oom(memory, x: int, capacity_mib: float, text: str, color: str, side: str) -> None:
    memory.plot([x], [capacity_mib / 1024], "x", color=color, markersize=10, markeredgewidth=2)
    memory.annotate(text, (x, capacity_mib / 1024), textcoords="offset points", ha=side,
                    xytext=(10 if side == "left" else -10, -18), fontsize="small", color=color,
                    bbox={"facecolor": "white", "edgecolor": "none", "pad": 1})


def _bars(t: Table, results: dict[str, Result], memory, minutes) -> None:
    """A pair of bars per row, the seed's and this run's, labelled with their values; this run's GPU-minutes
    marked on its minutes bar (where it has them)."""
    varying = [c for c in t.columns if len({column_text(row, c) for row in t.rows}) > 1]
    labels = ["\n".join(column_text(row, c) for c in varying) for row in t.rows]
    xs = range(len(t.rows))
    runs = [results.get(row.spec.key) for row in t.rows]
    for axes, (metric, divisor, digits) in zip((memory, minutes), PANELS):
        seed = _plotted([seed_value(row, metric) for row in t.rows], divisor)
        now = _plotted([run_value(r, metric) for r in runs], divisor)
        for offset, values, color, label in ((-0.2, seed, "#bbbbbb", "seed"), (0.2, now, "C0", "this run")):
            bars = axes.bar([x + offset for x in xs], values, width=0.4, color=color, label=label)
            axes.bar_label(bars, ["" if math.isnan(v) else f"{v:.{digits}f}" for v in values], fontsize="small")
        for x, result in zip(xs, runs):
            if result is None or result.outcome != "ok":
                axes.annotate("not run" if result is None else result.outcome.upper(), (x + 0.2, 0),
                              textcoords="offset points", xytext=(0, 4), ha="center", rotation=90,
                              fontsize="small")
        axes.set_xticks(list(xs), labels)
        axes.set_xlim(-0.6, len(t.rows) - 0.4)  # bars without a value do not widen the limits themselves
        axes.set_xlabel(" / ".join(varying))
        axes.margins(y=0.2)  # room for the bar labels and the legend
    memory.legend(fontsize="small", loc="upper left", ncols=2)
    if gpu_minutes := _gpu_minutes(runs):
        marks = minutes.plot([x + 0.2 for x in xs], _plotted(gpu_minutes, 1), "_", color="black", markersize=16,
                             markeredgewidth=2, label=GPU_KERNELS)
        minutes.legend(handles=marks, fontsize="small", loc="upper left")


def family_colors() -> dict:
    """One colour per kernel family, the same in every plot (the report's and the history page's): the strong
    colours of matplotlib's tab20 first, then its light ones; "other" grey."""
    from matplotlib import colormaps

    palette = colormaps["tab20"]
    return {family: "lightgrey" if family == kernels.OTHER else palette((2 * i) % 20 + (2 * i) // 20)
            for i, family in enumerate(kernels.families())}


def family_plot(t: Table, results: dict[str, Result], plots_dir: Path) -> list[str]:
    """Write where each row's GPU time goes, a bar per row stacked by kernel family (GPU-minutes per 1000 samples,
    the families by today's rules), and return the Markdown that links it; nothing where no row has families."""
    runs = [(row, results.get(row.spec.key)) for row in t.rows]
    minutes = [{family: minutes_per_1000_samples(seconds, r.case["samples"])
                for family, seconds in (kernels.epoch_families(r.kernels) or {}).items()} if r and r.outcome == "ok" else {}
               for _, r in runs]
    return _stacked(t, runs, minutes, family_colors(), plots_dir, name="families", what="GPU time by kernel family",
                    ylabel="GPU-minutes per 1000 samples", missing="no families")


def memory_plot(t: Table, results: dict[str, Result], plots_dir: Path) -> list[str]:
    """Write where each row's memory goes at its allocated peak, a bar per row stacked by category (sftbench.memory),
    the allocator's slack on top (the bar is then what it had reserved), and return the Markdown that links it;
    nothing where no row has categories."""
    from matplotlib import colormaps

    runs = [(row, results.get(row.spec.key)) for row in t.rows]
    mib = [r.memory.categories.by_name() if r and r.outcome == "ok" and r.memory.categories else {} for _, r in runs]
    colors = {name: "lightgrey" if name == SLACK else colormaps["tab10"](i) for i, name in enumerate(MEMORY_CATEGORIES)}
    return _stacked(t, runs, mib, colors, plots_dir, name="memory", what="memory at the peak by category",
                    ylabel="MiB at the allocated peak", missing="no categories")


def _stacked(t: Table, runs: list, values: list[dict[str, float]], colors: dict, plots_dir: Path, *, name: str,
             what: str, ylabel: str, missing: str) -> list[str]:
    """A bar per row of the table, stacked by the keys of `colors` (each row's values; {} where it has none), written
    as <table>-<name>.png; the Markdown that links it, or nothing where no row has values."""
    if not any(values):
        return []
    from matplotlib.figure import Figure

    figure = Figure(figsize=(max(6.0, 0.9 * len(runs) + 3), 4.4), layout="constrained")
    axes = figure.subplots()
    varying = [c for c in t.columns if len({column_text(row, c) for row in t.rows}) > 1] or list(t.columns)
    xs = range(len(runs))
    bottom = [0.0] * len(runs)
    for part, color in colors.items():
        heights = [v.get(part, 0.0) for v in values]
        if any(heights):
            axes.bar(xs, heights, bottom=bottom, color=color, label=part, width=0.6)
            bottom = [b + h for b, h in zip(bottom, heights)]
    for x, (_, result) in zip(xs, runs):
        if not values[x]:
            axes.annotate(missing if result and result.outcome == "ok" else
                          ("not run" if result is None else result.outcome.upper()),
                          (x, 0), textcoords="offset points", xytext=(0, 4), ha="center", rotation=90, fontsize="x-small",
                          color="grey")
    axes.set_xticks(list(xs), ["\n".join(column_text(row, c) for c in varying) for row, _ in runs], rotation=45,
                    ha="right", fontsize="small")
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3, axis="y")
    figure.legend(fontsize="small", loc="outside lower center", ncols=3)  # below: a legend at the right cut the title
    gpu = next(r for _, r in runs if r is not None).machine.get("gpu")
    figure.suptitle(f"{t.title}: {what}\n{gpu}")
    plots_dir.mkdir(parents=True, exist_ok=True)
    figure.savefig(plots_dir / f"{t.name}-{name}.png", dpi=100)
    return [f"![{t.title}: {what}]({plots_dir.name}/{t.name}-{name}.png)", ""]
