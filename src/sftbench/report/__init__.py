"""The report: every table of the seed, row for row, with the seed's numbers beside this run's.

The seed is ms-swift's training benchmark (Benchmark.md, Dec 2023), whose tables sftbench reproduces:
minutes per 1000 samples and max reserved GPU memory of LoRA and full fine-tuning on an A100 80GB.

    tables   the Markdown of each seed table, seed | this run | ratio, with this run's GPU minutes
    mfu      model FLOPs utilization per case
    causes   fidelity notes: memory beyond 10%, outcomes, reversed trends and wall/GPU time disagreements
    plots    PNG plots of the sweeps, and of each row's GPU time by kernel family (written when a folder is given)
    values   a row's seed and run values and a table's sweeps, shared by tables, causes and plots

Reading results needs neither torch nor transformers, except for MFU of results written before
Result.model_shape existed (see mfu.py).
"""

from __future__ import annotations

from pathlib import Path

from sftbench.catalog import Table, seed_tables
from sftbench.report.causes import fidelity_notes
from sftbench.report.mfu import MFU_FORMULA, mfu, model_flops_per_token, peak_bf16_flops
from sftbench.report.plots import family_plot, memory_plot, plot
from sftbench.report.tables import coverage, stack, table
from sftbench.result import Result

__all__ = ["markdown", "mfu", "model_flops_per_token", "peak_bf16_flops"]

SEED_STACK = "A100 80GB, torch 2.1.1, flash_attn 2.3.4"


def markdown(results: dict[str, Result], plots_dir: Path | None = None,
             diagnostics: dict[str, dict] | None = None, user_tables: tuple[Table, ...] = (),
             beside: dict[str, Result] | None = None, only: set[str] = frozenset()) -> str:
    """The report. With `plots_dir` (a folder beside the Markdown file), its PNG plots are written there
    and linked relatively, as `<plots_dir name>/<table>.png`. `diagnostics` (sftbench.diagnostics.memory_at_peak) give
    the memory notes their measured causes. `user_tables` (sftbench.user_catalog) follow the seed's, without seed
    values. `beside`: another GPU's results, whose minutes, GPU minutes and MiB each table shows after this run's.
    `only`: the names of the tables to show (all where empty)."""
    lines = [f"# sftbench results: {stack(results)}", "", coverage(results, user_tables), "",
             f"Seed: ms-swift's Benchmark.md ({SEED_STACK}); its minutes are wall time of the whole "
             "`swift sft` run (model load included), ours are the training epoch of 1000 samples "
             "(projected from representative steps unless the mode says full). Memory is "
             "`torch.cuda.max_memory_reserved()` in both. Ratio = this run / seed.", "", MFU_FORMULA, ""]
    for t in (*seed_tables(), *user_tables):
        if only and t.name not in only:
            continue
        lines += table(t, results, beside)
        if plots_dir is not None:
            lines += (plot(t, results, Path(plots_dir)) + family_plot(t, results, Path(plots_dir))
                      + memory_plot(t, results, Path(plots_dir)))
    lines += fidelity_notes(results, diagnostics or {})
    return "\n".join(lines) + "\n"
