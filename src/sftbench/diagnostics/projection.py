"""The quick mode's projection against a full epoch, on the GPU.

For each row: quick runs before and after one full epoch (so drift over the run shows), each in a
fresh process like a pytest case, every result stored under the output folder, then a table of
quick vs full. Quick-mode settings can be varied (settle steps, representative steps: each
combination is run) to calibrate them.

On a shared host the machine's speed drifts within minutes, so quick runs and a full epoch taken
minutes apart also differ by that drift. The "replayed" column separates the method from the
drift: the quick mode's projection computed from the full epoch's own steps at the batches the
quick mode would time (same moments, same host state).

GPU-minutes are compared the same way: a full epoch traces every step's kernels (its wall time then
includes CUPTI's tracing), and the quick runs project theirs from the traced representative steps.

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
                quick.append((options.settle_steps, len(result.step_durations_s), result.minutes_per_1000_samples,
                              result.gpu_minutes_per_1000_samples))
        full = None if full_result is None else full_result.minutes_per_1000_samples
        full_gpu = None if full_result is None else full_result.gpu_minutes_per_1000_samples
        # Replayed with as many steps as the quick runs timed.
        replayed = None if full_result is None else replay_quick(
            full_result, quick[0][1] if quick else defaults.representative_steps)
        replayed_gpu = None if full_gpu is None else replay_quick_gpu(full_result, defaults.kernel_steps)
        # A full epoch without quick runs still gets its line, the quick columns empty.
        for settle_steps, timed, minutes, gpu in quick or ([(None,) * 4] if full is not None else []):
            table.append({"row": row.node_id, "settle": settle_steps, "steps": timed, "quick_min": minutes,
                          "full_min": full, "delta_pct": _delta(minutes, full), "replayed_min": replayed,
                          "quick_gpu_min": gpu, "full_gpu_min": full_gpu, "gpu_delta_pct": _delta(gpu, full_gpu),
                          "replayed_gpu_min": replayed_gpu})
    (out / "projection.json").write_text(json.dumps(table, indent=1) + "\n", encoding="utf-8")
    return table


def markdown_table(table: list[dict]) -> str:
    lines = ["| row | settle | steps | quick min/1000 | full min/1000 | quick vs full | replayed on the full epoch "
             "| quick GPU-min | full GPU-min | GPU quick vs full | GPU replayed |", "|---" * 11 + "|"]
    for t in table:
        cells = [_num(t["quick_min"]), _num(t["full_min"]), _pct(t["delta_pct"]), _replayed(t["replayed_min"], t["full_min"]),
                 _num(t.get("quick_gpu_min")), _num(t.get("full_gpu_min")), _pct(t.get("gpu_delta_pct")),
                 _replayed(t.get("replayed_gpu_min"), t.get("full_gpu_min"))]
        lines.append(f"| {t['row']} | {t['settle'] or ''} | {t['steps'] or ''} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value:+.1f}%"


def _replayed(replayed: float | None, full: float | None) -> str:
    return "" if replayed is None or not full else f"{replayed:.3f} ({100 * (replayed / full - 1):+.1f}%)"


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def _delta(quick: float | None, full: float | None) -> float | None:
    return None if quick is None or not full else 100 * (quick / full - 1)


def replay_quick_gpu(full: Result, count: int) -> float:
    """The quick mode's GPU-minute projection from a traced full epoch's own kernel steps: the kernel time of
    the `count` batches it would trace, interpolated over the epoch (kernel time has no drift to separate)."""
    micro = [(t, s) for t, s in zip(full.kernel_step_tokens, full.kernel_step_s) if t > 0]
    seconds = trainer.replay_quick([t for t, _ in micro], [s for _, s in micro], full.epoch_optimizer_steps,
                                   full.optimizer_kernel_s or 0.0, count)
    return minutes_per_1000_samples(seconds, full.case["samples"])


def replay_quick(full: Result, count: int) -> float:
    seconds = trainer.replay_quick(full.step_tokens, full.step_durations_s, full.epoch_optimizer_steps,
                                   full.optimizer_step_s, count)
    return minutes_per_1000_samples(seconds, full.case["samples"])
