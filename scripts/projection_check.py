"""Check the quick mode's projection against a full epoch, on the GPU (the aim: within 3%).

For each row: quick runs before and after one full epoch (so drift over the run shows), each in a
fresh process like a pytest case, every result's JSON written to --out, then a table of quick vs full.
Quick-mode settings can be varied (--settle, --steps: each combination is run) to calibrate them.

On a shared host the machine's speed drifts by more than 3% within minutes, so quick runs and a full
epoch taken minutes apart also differ by that drift. The "replayed" column separates the method from
the drift: the quick mode's projection computed from the full epoch's own steps at the batches the
quick mode would time (same moments, same host state).

Usage: python scripts/projection_check.py 'test_lora_max_length[qwen-7b-chat-512]' ... \
           [--quick-runs 2] [--settle 4] [--steps 32] [--samples N] --out DIR
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

from sftbench import catalog, trainer
from sftbench.launcher import Launcher
from sftbench.result import minutes_per_1000_samples
from sftbench.session import summary
from sftbench.spec import RunOptions


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rows", nargs="+")
    parser.add_argument("--quick-runs", type=int, default=2, help="quick runs per setting (half before the full epoch)")
    parser.add_argument("--settle", type=int, action="append", help="untimed settle steps (repeatable)")
    parser.add_argument("--steps", type=int, action="append", help="representative steps (repeatable)")
    parser.add_argument("--samples", type=int)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    try:
        rows = catalog.rows_by_id(args.rows)
    except catalog.UnknownRow as error:
        parser.error(str(error))
    defaults = RunOptions()
    settings = [RunOptions(settle_steps=settle, representative_steps=steps)
                for settle, steps in itertools.product(args.settle or [defaults.settle_steps],
                                                       args.steps or [defaults.representative_steps])]
    args.out.mkdir(parents=True, exist_ok=True)
    launcher, table = Launcher(), []
    for row in rows:
        name, spec = row.node_id, row.spec
        if args.samples:
            spec = spec.replace(samples=args.samples)
        before = args.quick_runs - args.quick_runs // 2
        plan = ([("quick", s) for s in settings] * before + [("full", RunOptions(full_epoch=True))]
                + [("quick", s) for s in settings] * (args.quick_runs // 2))
        full_result, quick = None, []
        for i, (mode, options) in enumerate(plan):
            result = launcher.run(spec, options)
            print(f"{name} {mode} settle={options.settle_steps} steps={options.representative_steps}: "
                  f"{summary(result)}", flush=True)
            (args.out / f"{spec.key}.{i:02d}.{mode}.json").write_text(result.to_json() + "\n", encoding="utf-8")
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
        for settle, steps, minutes in quick:
            delta = None if full is None else 100 * (minutes / full - 1)
            table.append({"row": name, "settle": settle, "steps": steps, "quick_min": minutes, "full_min": full,
                          "delta_pct": delta, "replayed_min": replayed})
        if not quick and full is not None:
            table.append({"row": name, "settle": None, "steps": None, "quick_min": None, "full_min": full,
                          "delta_pct": None, "replayed_min": replayed})
    (args.out / "projection.json").write_text(json.dumps(table, indent=1) + "\n", encoding="utf-8")
    print("\n| row | settle | steps | quick min/1000 | full min/1000 | quick vs full | replayed on the full epoch |"
          "\n|---|---|---|---|---|---|---|")
    for t in table:
        cells = [_num(t["quick_min"]), _num(t["full_min"]),
                 "" if t["delta_pct"] is None else f"{t['delta_pct']:+.1f}%",
                 "" if t["replayed_min"] is None else f"{t['replayed_min']:.3f} ({100 * (t['replayed_min'] / t['full_min'] - 1):+.1f}%)"]
        print(f"| {t['row']} | {t['settle'] or ''} | {t['steps'] or ''} | " + " | ".join(cells) + " |")
    return 0


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def replay_quick(full, count: int) -> float:
    seconds = trainer.replay_quick(full.step_tokens, full.step_durations_s, full.epoch_optimizer_steps,
                                   full.optimizer_step_s, count)
    return minutes_per_1000_samples(seconds, full.case["samples"])


if __name__ == "__main__":
    sys.exit(main())
