"""The report: every seed table, row for row, with the seed's numbers beside this run's.

Besides the tables: model FLOPs utilization (MFU) per case, PNG plots of the sweeps (written when a
folder is given) and fidelity notes (what differs from the seed: memory beyond 10%, outcomes, and
within-table trends that go the other way).
"""

from __future__ import annotations

import json
import math
import re
from functools import cache
from statistics import median
from pathlib import Path

from sftbench.catalog import Row, Table, seed_tables
from sftbench.models import get_model
from sftbench.result import Result

SEED_STACK = "A100 80GB, torch 2.1.1, flash_attn 2.3.4"
SEED_GPU_MIB = 81920  # the seed's A100 80GB

# Peak dense (no sparsity) bf16 tensor-core FLOP/s by GPU name; a GPU that matches none gets no MFU.
PEAK_BF16_FLOPS = (
    (re.compile(r"H100.*(SXM|HBM3)"), 989e12),
    (re.compile(r"H200(?!.*NVL)"), 989e12),
    (re.compile(r"A100"), 312e12),
)
# Matmul FLOPs per parameter and token, forward + backward: full fine-tuning computes weight gradients,
# LoRA's frozen weights need only the activation gradients.
MATMUL_FLOPS_PER_PARAM = {"full": 6, "lora": 4}

MFU_FORMULA = (
    "MFU = tokens/s × model FLOPs per token ÷ the GPU's peak dense bf16 FLOP/s (H100 SXM and H200 989 T, "
    "A100 312 T; empty for other GPUs). Model FLOPs per token = k·N + 6·L·h·s: N the matmul parameters (the "
    "checkpoint's parameters minus the input embedding, vocabulary × hidden; the untied output head counts), "
    "k = 6 for full fine-tuning and 4 for LoRA (frozen weights need no weight gradients; the adapters' own "
    "FLOPs are left out), 6·L·h·s causal attention forward and backward over L layers of hidden size h, "
    "s the epoch's mean sample length after truncation. Recomputation by gradient checkpointing is not "
    "counted, as usual for MFU; quantized rows count as bf16 matmuls."
)

MEMORY_NOTE_RATIO = 0.10  # a bf16 row whose reserved memory is off the seed's by more than this gets a note
TREND_MIN_CHANGE = 0.01  # neighbouring rows that change less than this in both runs show no trend to reverse
NOT_MEASURED = "not yet measured"
# A step with more tokens whose time grows by less than this fraction of the token growth is host-bound.
HOST_BOUND_GROWTH = 0.8
# A step of a quarter of the tokens or fewer that still takes this share of the longest step's time is host-bound.
HOST_FLOOR_SHARE = 0.6

# Tables that get a plot, and how: "lines" along the table's numeric column, per model; "bars" per row.
PLOTS = {"lora_max_length": "lines", "full_max_length": "lines", "batch_size": "lines",
         "lora_rank_targets": "bars"}
# Each plot's two panels: (metric, divisor to the plotted unit, decimals of a bar's label); memory in GiB.
PANELS = (("MiB", 1024, 1), ("min", 1, 2))


def load_results(folder: Path) -> dict[str, Result]:
    """Results by configuration key, from a results/<gpu>/ folder or a baselines/<gpu>/ folder."""
    results = {}
    for path in sorted(Path(folder).glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        result = Result.from_dict(data["result"] if "result" in data else data)
        results[result.key] = result
    return results


def load_diagnostics(folder: Path) -> dict[str, dict]:
    """Memory diagnostics by configuration key: the JSON files of `scripts/step_profile.py --memory`."""
    diagnostics = {}
    for path in sorted(Path(folder).glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        if "memory_at_peak" in data:
            diagnostics[data["key"]] = data["memory_at_peak"]
    return diagnostics


def markdown(results: dict[str, Result], plots_dir: Path | None = None,
             diagnostics: dict[str, dict] | None = None) -> str:
    """The report. With `plots_dir` (a folder beside the Markdown file), its PNG plots are written there
    and linked relatively, as `<plots_dir name>/<table>.png`. `diagnostics` (load_diagnostics) give
    the memory notes their measured causes."""
    lines = [f"# sftbench results: {_stack(results)}", "", _coverage(results), "",
             f"Seed: ms-swift's Benchmark.md ({SEED_STACK}); its minutes are wall time of the whole "
             "`swift sft` run (model load included), ours are the training epoch of 1000 samples "
             "(projected from representative steps unless the mode says full). Memory is "
             "`torch.cuda.max_memory_reserved()` in both. Ratio = this run / seed.", "", MFU_FORMULA, ""]
    for t in seed_tables():
        lines += _table(t, results)
        if plots_dir is not None and t.name in PLOTS:
            lines += _plot(t, results, Path(plots_dir))
    lines += _fidelity_notes(results, diagnostics or {})
    return "\n".join(lines) + "\n"


def _stack(results: dict[str, Result]) -> str:
    for r in results.values():
        v = r.versions
        return (f"{r.machine.get('gpu')}, torch {v.get('torch')}, transformers {v.get('transformers')}, "
                f"peft {v.get('peft')}, flash-attn {v.get('flash-attn')}")
    return "no results"


def _coverage(results: dict[str, Result]) -> str:
    rows = [row for t in seed_tables() for row in t.rows]
    shown = {row.spec.key for row in rows} & set(results)
    modes = ", ".join(sorted({results[key].mode for key in shown})) or "none"
    line = (f"This run: {len(shown)} configurations, {sum(row.spec.key in results for row in rows)} of the "
            f"{len(rows)} seed rows (mode: {modes}).")
    if len(results) > len(shown):
        line += f" {len(results) - len(shown)} other configurations are not in the seed's tables and not shown."
    return line


# --- the tables -----------------------------------------------------------------------------------------


def _table(t: Table, results: dict[str, Result]) -> list[str]:
    head = [*t.columns, "seed min", "min", "ratio", "seed MiB", "MiB", "ratio", "tokens/s", "MFU", "attention",
            "mode"]
    trainable = any(row.seed_trainable for row in t.rows)  # the seed printed it for the LoRA rank table
    if trainable:
        head += ["seed trainable", "trainable"]
    lines = [f"## {t.title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in t.rows:
        result = results.get(row.spec.key)
        cells = _cells(row, t, result)
        if trainable:
            cells += [_millions(row.seed_trainable), _millions(result.trainable_params if result else None)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def _millions(count: int | None) -> str:
    return "" if count is None else f"{count / 1e6:.2f}M"


def _cells(row: Row, t: Table, result: Result | None) -> list[str]:
    config = [_column(row, column) for column in t.columns]
    seed_min = "OOM" if row.seed_outcome == "oom" else _num(row.seed_minutes)
    seed_mib = "OOM" if row.seed_outcome == "oom" else _num(row.seed_memory_mib, 0)
    if result is None:
        return [*config, seed_min, "not run", "", seed_mib, "not run", "", "", "", "", ""]
    if result.outcome != "ok":
        outcome = result.outcome.upper()
        return [*config, seed_min, outcome, "", seed_mib, outcome, "", "", "", result.attention or "", result.mode]
    minutes, mib, utilization = result.minutes_per_1000_samples, result.memory.max_reserved_mib, mfu(result)
    return [*config, seed_min, _num(minutes), _ratio(minutes, row.seed_minutes), seed_mib, _num(mib, 0),
            _ratio(mib, row.seed_memory_mib), _num(result.tokens_per_s, 0),
            "" if utilization is None else f"{utilization:.1%}", result.attention or "", result.mode]


def _column(row: Row, column: str) -> str:
    if column == "use_flash_attn":
        return "✔" if row.spec.attention == "flash_attention_2" else "✘"
    value = getattr(row.spec, column)
    return {True: "✔", False: "✘"}.get(value, str(value)) if isinstance(value, bool) else str(value)


def _num(value: float | None, digits: int = 2) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _ratio(now: float | None, seed: float | None) -> str:
    return "" if now is None or not seed else f"{now / seed:.2f}"


# --- model FLOPs utilization --------------------------------------------------------------------------


def peak_bf16_flops(gpu: str | None) -> float | None:
    """The GPU's peak dense bf16 FLOP/s by its name (torch.cuda.get_device_name), None if unknown."""
    for pattern, flops in PEAK_BF16_FLOPS:
        if gpu and pattern.search(gpu):
            return flops
    return None


def model_flops_per_token(result: Result) -> float | None:
    """k·N + 6·L·h·s (see MFU_FORMULA); None where the checkpoint's parameter count is unknown (tiny types)."""
    if result.total_params is None or not result.epoch_tokens:
        return None
    vocab, hidden, layers = _shape(result.case["model_type"])
    matmul_params = result.total_params - vocab * hidden
    mean_length = result.epoch_tokens / result.case["samples"]
    return MATMUL_FLOPS_PER_PARAM[result.case["sft_type"]] * matmul_params + 6 * layers * hidden * mean_length


def mfu(result: Result) -> float | None:
    """Achieved model FLOP/s ÷ the GPU's peak dense bf16 FLOP/s; None where either is unknown."""
    flops, peak = model_flops_per_token(result), peak_bf16_flops(result.machine.get("gpu"))
    if flops is None or peak is None or not result.tokens_per_s:
        return None
    return result.tokens_per_s * flops / peak


@cache
def _shape(model_type: str) -> tuple[int, int, int]:
    """(vocabulary, hidden size, layers) of the zoo's config; ChatGLM's embedding is its padded vocabulary."""
    config = get_model(model_type).make_config()
    vocab = getattr(config, "padded_vocab_size", None) or config.vocab_size
    return vocab, config.hidden_size, config.num_hidden_layers


# --- seed and run values, and the sweeps of a table -------------------------------------------------------


def _seed_value(row: Row, metric: str) -> float | None:
    if row.seed_outcome != "ok":
        return None
    return row.seed_minutes if metric == "min" else row.seed_memory_mib


def _run_value(result: Result | None, metric: str) -> float | None:
    if result is None or result.outcome != "ok":
        return None
    return result.minutes_per_1000_samples if metric == "min" else result.memory.max_reserved_mib


def _axis(t: Table) -> str | None:
    """The table's numeric column (max_length, batch_size, lora_rank), if it has one."""
    for column in t.columns:
        value = getattr(t.rows[0].spec, column, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return column
    return None


def _sweeps(t: Table, axis: str) -> list[list[Row]]:
    """The table's rows grouped by every column but the axis, each group sorted along the axis."""
    groups: dict[tuple[str, ...], list[Row]] = {}
    for row in t.rows:
        groups.setdefault(tuple(_column(row, c) for c in t.columns if c != axis), []).append(row)
    return [sorted(rows, key=lambda row: getattr(row.spec, axis)) for rows in groups.values()]


# --- fidelity notes ------------------------------------------------------------------------------------


def _fidelity_notes(results: dict[str, Result], diagnostics: dict[str, dict]) -> list[str]:
    lines = ["## Fidelity notes", "",
             "What differs from the seed. A cause is given where this run's own numbers or a memory diagnostic "
             f"of its configuration show it; otherwise it is {NOT_MEASURED}.", ""]
    for title, head, rows in (
        (f"Memory more than {MEMORY_NOTE_RATIO:.0%} off the seed (bf16 rows)",
         ["rows", "seed MiB", "MiB", "ratio"], _memory_notes(results, diagnostics)),
        ("Outcome differs from the seed", ["rows", "seed", "this run"], _outcome_notes(results)),
        ("Within-table trend goes the other way", ["table", "rows", "metric", "seed", "this run"],
         _trend_notes(results)),
    ):
        lines += [f"### {title}", ""]
        if rows:
            lines += ["| " + " | ".join([*head, "cause"]) + " |", "|" + "---|" * (len(head) + 1)]
            lines += ["| " + " | ".join(cells) + " |" for cells in rows]
        else:
            lines.append("None.")
        lines.append("")
    return lines


def _by_configuration(results: dict[str, Result]) -> dict[tuple[str, float | None, str], list[Row]]:
    """Seed rows that have a result, grouped by (configuration, seed MiB, seed outcome): a configuration
    in several tables is noted once."""
    groups: dict[tuple[str, float | None, str], list[Row]] = {}
    for row in (row for t in seed_tables() for row in t.rows if row.spec.key in results):
        groups.setdefault((row.spec.key, row.seed_memory_mib, row.seed_outcome), []).append(row)
    return groups


def _node_ids(rows: list[Row]) -> str:
    return ", ".join(f"`{row.node_id}`" for row in rows)


def _memory_notes(results: dict[str, Result], diagnostics: dict[str, dict]) -> list[list[str]]:
    notes = []
    for (key, seed, _), rows in _by_configuration(results).items():
        now = _run_value(results[key], "MiB")
        if rows[0].spec.quantization == "bf16" and seed and now and abs(now / seed - 1) > MEMORY_NOTE_RATIO:
            cause = _peak_composition(diagnostics[key]) if key in diagnostics else NOT_MEASURED
            notes.append([_node_ids(rows), _num(seed, 0), _num(now, 0), _ratio(now, seed), cause])
    return notes


def _peak_composition(peak: dict, groups: int = 3) -> str:
    """What this run holds at its peak, from a memory diagnostic: the largest groups of live tensors."""
    largest = ", ".join(f"{mib} MiB {where}" for where, mib, _ in peak["groups_mib"][:groups])
    return (f"at the peak of its longest micro-step ({peak['batch_tokens']} tokens), above the "
            f"{peak['allocated_before_mib']} MiB held before it: {largest} (scripts/step_profile.py --memory)")


def _outcome_notes(results: dict[str, Result]) -> list[list[str]]:
    notes = []
    for (key, _, seed_outcome), rows in _by_configuration(results).items():
        result = results[key]
        if result.outcome != seed_outcome:
            fits = f", {_num(result.memory.max_reserved_mib, 0)} MiB" if result.outcome == "ok" else ""
            notes.append([_node_ids(rows), seed_outcome.upper(), result.outcome.upper() + fits, _outcome_cause(result)])
    return notes


def _outcome_cause(result: Result) -> str:
    """A seed OOM that fits here because this card is larger: its peak is more than the seed's card holds."""
    peak, card = result.memory.max_reserved_mib, result.machine.get("gpu_memory_mib")
    if result.outcome == "ok" and peak and card and SEED_GPU_MIB < peak < card:
        return f"needs more than the seed's 80 GB ({SEED_GPU_MIB} MiB); this GPU has {card} MiB"
    return NOT_MEASURED


def _trend_notes(results: dict[str, Result]) -> list[list[str]]:
    """Neighbouring rows along a table's numeric column where the seed's order and this run's disagree."""
    notes = []
    for t in seed_tables():
        axis = _axis(t)
        for sweep in _sweeps(t, axis) if axis else []:
            for a, b in zip(sweep, sweep[1:]):
                notes += [[t.title, f"{a.id} → {b.id}", metric, *changes, _trend_cause(a, b, metric, results)]
                          for metric in ("min", "MiB") if (changes := _reversal(a, b, metric, results))]
    return notes


def _trend_cause(a: Row, b: Row, metric: str, results: dict[str, Result]) -> str:
    """Where steps cost about the same whatever their tokens, a fixed cost per step dominates: the host's
    (Python, kernel launches), not the GPU's work. Shown by row b's steps holding far more tokens than
    row a's at little more time (longer samples), or by row a's shortest timed step costing nearly what
    its longest does (a larger batch then pays that cost once for several samples). Facts of this run;
    the seed's steps on the A100 grew with the tokens."""
    ra, rb = results[a.spec.key], results[b.spec.key]
    if metric != "min" or not (ra.step_durations_s and rb.step_durations_s):
        return NOT_MEASURED
    (ta, sa), (tb, sb) = [(median(r.step_tokens), median(r.step_durations_s)) for r in (ra, rb)]
    if tb >= 1.2 * ta and sb / sa < HOST_BOUND_GROWTH * tb / ta:
        return (f"host-bound steps here: the median timed step takes {sa:.2f} s at {ta:.0f} tokens and "
                f"{sb:.2f} s at {tb:.0f}")
    steps = sorted(zip(ra.step_tokens, ra.step_durations_s))
    (t_short, s_short), (t_long, s_long) = steps[0], steps[-1]
    if t_short <= 0.25 * t_long and s_short >= HOST_FLOOR_SHARE * s_long:
        return (f"a per-step host cost: in {a.id} the shortest timed step ({t_short} tokens) takes {s_short:.2f} s, "
                f"the longest ({t_long} tokens) {s_long:.2f} s")
    return NOT_MEASURED


def _reversal(a: Row, b: Row, metric: str, results: dict[str, Result]) -> list[str] | None:
    """The seed's change from row a to row b and this run's, where they go opposite ways."""
    seed = (_seed_value(a, metric), _seed_value(b, metric))
    now = (_run_value(results.get(a.spec.key), metric), _run_value(results.get(b.spec.key), metric))
    if None in seed + now or (seed[1] - seed[0]) * (now[1] - now[0]) >= 0:
        return None
    if max(abs(seed[1] / seed[0] - 1), abs(now[1] / now[0] - 1)) < TREND_MIN_CHANGE:
        return None
    return [_change(*seed, metric), _change(*now, metric)]


def _change(before: float, after: float, metric: str) -> str:
    digits = 2 if metric == "min" else 0
    return f"{_num(before, digits)} → {_num(after, digits)} ({(after / before - 1) * 100:+.2g}%)"


# --- plots ---------------------------------------------------------------------------------------------


def _plot(t: Table, results: dict[str, Result], plots_dir: Path) -> list[str]:
    """Write the table's plot and return the Markdown that links it; nothing for a table with no results."""
    if not any(row.spec.key in results for row in t.rows):
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
    """One colour per model along the table's numeric column: the seed dashed, this run solid."""
    axis = _axis(t)
    ticks = sorted({getattr(row.spec, axis) for row in t.rows})
    sweeps = [sweep for sweep in _sweeps(t, axis) if any(row.spec.key in results for row in sweep)]
    for i, sweep in enumerate(sweeps):
        color = f"C{i % 10}"
        xs = [getattr(row.spec, axis) for row in sweep]
        runs = [results.get(row.spec.key) for row in sweep]
        name = " ".join(_column(sweep[0], c) for c in t.columns if c != axis)
        for axes, (metric, divisor, _) in zip((memory, minutes), PANELS):
            for values, style, face, source in (([_seed_value(row, metric) for row in sweep], "--o", "white", "seed"),
                                                ([_run_value(r, metric) for r in runs], "-o", color, "this run")):
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
    """A pair of bars per row, the seed's and this run's, labelled with their values."""
    varying = [c for c in t.columns if len({_column(row, c) for row in t.rows}) > 1]
    labels = ["\n".join(_column(row, c) for c in varying) for row in t.rows]
    xs = range(len(t.rows))
    runs = [results.get(row.spec.key) for row in t.rows]
    for axes, (metric, divisor, digits) in zip((memory, minutes), PANELS):
        seed = _plotted([_seed_value(row, metric) for row in t.rows], divisor)
        now = _plotted([_run_value(r, metric) for r in runs], divisor)
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
