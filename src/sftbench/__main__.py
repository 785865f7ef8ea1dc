"""python -m sftbench models | baselines | report | run: the suite's data, for people and scripts."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from sftbench import catalog
from sftbench.spec import ATTENTIONS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sftbench", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    models = commands.add_parser("models", help="every seed model_type with total and LoRA-trainable parameters")
    models.add_argument("--json", action="store_true")

    baselines = commands.add_parser("baselines", help="the stored baselines, one entry per seed row")
    baselines.add_argument("--json", action="store_true")
    baselines.add_argument("--dir", default="baselines", type=Path)

    report = commands.add_parser("report", help="Markdown of every seed table: seed | this run | ratio")
    report.add_argument("folder", type=Path, help="a results/<gpu>/ or baselines/<gpu>/ folder")
    report.add_argument("--out", type=Path, help="write here instead of standard output")
    report.add_argument("--plots", type=Path, help="write PNG plots to this folder (beside --out: links are relative)")
    report.add_argument("--diagnostics", type=Path,
                        help="memory diagnostics (scripts/step_profile.py --memory) for the fidelity notes' causes")

    run = commands.add_parser("run", help="run catalog rows' configurations, each in a fresh process")
    run.add_argument("rows", nargs="+", help="pytest ids such as 'test_lora_max_length[qwen-7b-chat-4096]'")
    run.add_argument("--attention", choices=ATTENTIONS, action="append",
                     help="run with this kernel instead of the row's (repeat to run each row with several)")
    run.add_argument("--samples", type=int, help="train on this many samples instead of the row's 1000")
    run.add_argument("--full-epoch", action="store_true")
    run.add_argument("--attn-fallback", choices=("sdpa", "eager"))
    run.add_argument("--out", type=Path, help="a folder to write each result's JSON to")

    args = parser.parse_args(argv)
    return {"models": _models, "baselines": _baselines, "report": _report, "run": _run}[args.command](args)


def _models(args) -> int:
    from sftbench.models import models_summary

    configs = sorted({(r.spec.lora_rank, r.spec.lora_targets) for t in catalog.seed_tables() for r in t.rows
                      if r.spec.sft_type == "lora"})
    summary = models_summary(configs)
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        for model_type, info in summary.items():
            lora = ", ".join(f"{label} {count:,}" for label, count in info["trainable_params"].items())
            print(f"{model_type:28} {info['total_params']:>16,}  {lora}")
    return 0


def _baselines(args) -> int:
    from sftbench.baselines import BaselineError, BaselineStore, listing

    try:
        entries = listing(BaselineStore(args.dir))
    except BaselineError as error:
        print(f"sftbench: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(entries, indent=1))
    else:
        for e in entries:
            minutes = "" if e["minutes_per_1000_samples"] is None else f"{e['minutes_per_1000_samples']:.2f} min"
            reserved = "" if e["max_reserved_mib"] is None else f"{e['max_reserved_mib']:.0f} MiB"
            print(f"{e['gpu']:24} {e['test']}[{e['case_id']}]  {e['outcome']:5} {minutes:>10} {reserved:>10}")
    return 0


def _report(args) -> int:
    from sftbench.report import load_diagnostics, load_results, markdown

    if not args.folder.is_dir():
        print(f"sftbench: {args.folder} is not a folder of results (results/<gpu>/ or baselines/<gpu>/)",
              file=sys.stderr)
        return 2
    text = markdown(load_results(args.folder), args.plots,
                    load_diagnostics(args.diagnostics) if args.diagnostics else None)
    if args.out:
        args.out.write_text(text, encoding="utf-8")
    else:
        print(text)
    return 0


def _run(args) -> int:
    from sftbench.launcher import Launcher
    from sftbench.session import cannot_run, summary
    from sftbench.spec import InvalidSpec, RunOptions

    try:
        rows = catalog.rows_by_id(args.rows)
    except catalog.UnknownRow as error:
        print(f"sftbench: {error}", file=sys.stderr)
        return 2
    options = RunOptions(full_epoch=args.full_epoch, attn_fallback=args.attn_fallback)
    changes = {} if args.samples is None else {"samples": args.samples}
    try:
        specs = [(row.node_id, row.spec.replace(**changes, **({"attention": kernel} if kernel else {})))
                 for row in rows for kernel in (args.attention or [None])]
    except InvalidSpec as error:
        print(f"sftbench: {error}", file=sys.stderr)
        return 2
    reasons = {f"{name}: {reason}" for name, spec in specs if (reason := cannot_run(spec, args.attn_fallback))}
    if reasons:
        print("sftbench: cannot run here:\n  " + "\n  ".join(sorted(reasons)), file=sys.stderr)
        return 2
    launcher, failed, written = Launcher(), 0, Counter()
    for name, spec in specs:
        result = launcher.run(spec, options)
        print(f"{name} [{spec.key}]: {summary(result)}", flush=True)
        failed += result.outcome == "error"
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            stem = f"{spec.key}.{result.mode}"
            written[stem] += 1  # a row given twice is run twice: keep both results
            suffix = "" if written[stem] == 1 else f".{written[stem]}"
            (args.out / f"{stem}{suffix}.json").write_text(result.to_json() + "\n", encoding="utf-8")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
