"""The quick mode's projection against a full epoch, on the GPU.

For each row: quick runs before and after one full epoch (so drift over the run shows), each in a
fresh process like a pytest case, every result stored under the output folder, then a table of
quick vs full. Quick-mode settings can be varied (settle steps, representative steps: each
combination is run) to calibrate them.

On a shared host the machine's speed drifts within minutes, so quick runs and a full epoch taken
minutes apart also differ by that drift. The "replayed" column separates the method from the
drift: the quick mode's projection computed from the full epoch's own steps at the batches the
quick mode would time (same moments, same host state).

`python -m sftbench projection ROW... --out DIR` runs it.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from sftbench import trainer
from sftbench.catalog import Row
from sftbench.launcher import Launcher
from sftbench.result import Result, describe, minutes_per_1000_samples
from sftbench.runner import ResultStore
from sftbench.spec import RunOptions


def check_projection(rows: list[Row], out: Path, *, quick_runs: int = 2, settle: list[int] | None = None,
                     steps: list[int] | None = None, samples: int | None = None, log=print) -> list[dict]:
    """Run the plan for every row; write <out>/projection.json and return its entries."""
    defaults = RunOptions()
    settings = [RunOptions(settle_steps=s, representative_steps=n)
                for s, n in itertools.product(settle or [defaults.settle_steps], steps or [defaults.representative_steps])]
    out.mkdir(parents=True, exist_ok=True)
    launcher, store, table = Launcher(), ResultStore(out), []
    for row in rows:
        spec = row.spec.replace(samples=samples) if samples else row.spec
        before = quick_runs - quick_runs // 2
        plan = ([("quick", s) for s in settings] * before + [("full", RunOptions(full_epoch=True))]
                + [("quick", s) for s in settings] * (quick_runs // 2))
        full_result, quick = None, []
        for mode, options in plan:
            result = launcher.run(spec, options)
            log(f"{row.node_id} {mode} settle={options.settle_steps} steps={options.representative_steps}: "
                f"{describe(result)}")
            store.write(result)
            if result.outcome != "ok":
                continue
            if mode == "full":
                full_result = result
            else:
                quick.append((options.settle_steps, len(result.step_durations_s), result.minutes_per_1000_samples))
        full = None if full_result is None else full_result.minutes_per_1000_samples
        # Replayed with as many steps as the quick runs timed.
        replayed = None if full_result is None else replay_quick(
            full_result, quick[0][1] if quick else defaults.representative_steps)
        for settle_steps, timed, minutes in quick:
            delta = None if full is None else 100 * (minutes / full - 1)
            table.append({"row": row.node_id, "settle": settle_steps, "steps": timed, "quick_min": minutes,
                          "full_min": full, "delta_pct": delta, "replayed_min": replayed})
        if not quick and full is not None:
            table.append({"row": row.node_id, "settle": None, "steps": None, "quick_min": None, "full_min": full,
                          "delta_pct": None, "replayed_min": replayed})
    (out / "projection.json").write_text(json.dumps(table, indent=1) + "\n", encoding="utf-8")
    return table


def markdown_table(table: list[dict]) -> str:
    lines = ["| row | settle | steps | quick min/1000 | full min/1000 | quick vs full | replayed on the full epoch |",
             "|---|---|---|---|---|---|---|"]
    for t in table:
        cells = [_num(t["quick_min"]), _num(t["full_min"]),
                 "" if t["delta_pct"] is None else f"{t['delta_pct']:+.1f}%",
                 "" if t["replayed_min"] is None else
                 f"{t['replayed_min']:.3f} ({100 * (t['replayed_min'] / t['full_min'] - 1):+.1f}%)"]
        lines.append(f"| {t['row']} | {t['settle'] or ''} | {t['steps'] or ''} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def replay_quick(full: Result, count: int) -> float:
    seconds = trainer.replay_quick(full.step_tokens, full.step_durations_s, full.epoch_optimizer_steps,
                                   full.optimizer_step_s, count)
    return minutes_per_1000_samples(seconds, full.case["samples"])
