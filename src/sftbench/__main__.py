"""python -m sftbench COMMAND: the suite's catalog and stored measurements, single rows trained or diagnosed,
and Markdown over results, for people and scripts (`python -m sftbench COMMAND --help`: a command's arguments)."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

from sftbench import catalog
from sftbench.kernels import BadRules
from sftbench.selftest import STAGES
from sftbench.spec import ATTENTIONS, CaseSpec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sftbench", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    models = commands.add_parser("models", help="every seed model_type with total and LoRA-trainable parameters")
    models.add_argument("--json", action="store_true")

    baselines = commands.add_parser("baselines", help="the stored baselines, one entry per seed row")
    baselines.add_argument("--json", action="store_true")
    baselines.add_argument("--dir", type=Path, help="a baselines folder (default: baselines/ of the repository: the "
                                                    "nearest folder up from here with pyproject.toml or conftest.py)")

    report = commands.add_parser("report", help="Markdown of every seed table: seed | this run | ratio")
    report.add_argument("folder", type=Path, help="a results/<gpu>/ or baselines/<gpu>/ folder")
    report.add_argument("--out", type=Path, help="write here instead of standard output")
    report.add_argument("--plots", type=Path, help="write PNG plots to this folder (beside --out: links are relative)")
    report.add_argument("--diagnostics", type=Path,
                        help="memory diagnostics (python -m sftbench profile --memory) for the fidelity notes' causes")
    _catalog_option(report, "also the tables of this catalog of your own (--sftbench-catalog), after the seed's")
    report.add_argument("--beside", type=Path, metavar="FOLDER",
                        help="another GPU's results or baselines folder: its minutes, GPU minutes and MiB beside each row")
    report.add_argument("--table", action="append", default=[], metavar="NAME",
                        help="only this table (repeatable): a seed table's name (lora_max_length, ...) or one of --catalog")

    history = commands.add_parser("history", help="GPU-minutes, wall minutes and memory per configuration over "
                                                  "the run records of a results/history folder")
    history.add_argument("folder", type=Path, help="a results/history folder (one run record per pytest run)")
    history.add_argument("--out", type=Path, help="write here instead of standard output")
    history.add_argument("--plots", type=Path, help="write a PNG per configuration to this folder "
                                                    "(beside --out: links are relative)")
    history.add_argument("--summary", action="store_true",
                         help="only the newest run, regressions first, then improvements (a CI job summary)")
    history.add_argument("--cost", action="store_true",
                         help="only the newest run: where each configuration's time went, phase by phase")
    history.add_argument("--beside", type=Path, metavar="FOLDER",
                         help="only the newest run, beside the newest of this other history folder (pytest-xdist "
                              "against one process, two hosts): verdicts, GPU-minutes and memory per configuration")

    run = commands.add_parser("run", help="run catalog rows' configurations, each in a fresh process")
    run.add_argument("rows", nargs="+", help="pytest ids such as 'test_lora_max_length[qwen-7b-chat-4096]'")
    run.add_argument("--attention", choices=ATTENTIONS, action="append",
                     help="run with this kernel instead of the row's (repeat to run each row with several)")
    run.add_argument("--samples", type=int, help="train on this many samples instead of the row's 1000")
    run.add_argument("--full-epoch", action="store_true")
    run.add_argument("--attn-fallback", choices=("sdpa", "eager"))
    run.add_argument("--out", type=Path, help="a folder to write each result's JSON to (<out>/<gpu>/<key>.json)")
    _catalog_option(run, "rows of this catalog of your own too (--sftbench-catalog)")

    profile = commands.add_parser("profile", help="where one row's micro-step time and peak memory go (a diagnostic)")
    profile.add_argument("row", help="a pytest id such as 'test_lora_max_length[qwen-7b-chat-512]'")
    profile.add_argument("--steps", type=int, default=20, help="micro-steps per timed block")
    profile.add_argument("--blocks", type=int, default=3, help="timed blocks per NVML sampler setting")
    profile.add_argument("--memory", action="store_true", help="group the live tensors at the peak")
    profile.add_argument("--no-timing", action="store_true")
    profile.add_argument("--clock", type=int, default=0, metavar="N",
                         help="trace the longest and the middle micro-step N times each: kernel time and SM clock")
    profile.add_argument("--tracing", type=int, default=0, metavar="N",
                         help="the longest and the middle micro-step N times each untraced, traced for kernels alone, "
                              "with operators counted, and with API calls counted too: what tracing costs")
    profile.add_argument("--out", type=Path, required=True)
    _catalog_option(profile, "rows of this catalog of your own too (--sftbench-catalog)")

    projection = commands.add_parser("projection", help="the quick mode's projection against a full epoch")
    projection.add_argument("rows", nargs="+", help="pytest ids such as 'test_lora_max_length[qwen-7b-chat-512]'")
    projection.add_argument("--quick-runs", type=int, default=2, help="quick runs per setting (half before the full epoch)")
    projection.add_argument("--settle", type=int, action="append", help="untimed settle steps (repeatable)")
    projection.add_argument("--steps", type=int, action="append", help="representative steps (repeatable)")
    projection.add_argument("--samples", type=int)
    projection.add_argument("--reference-steps", type=int,
                            help="GPU time only: instead of a full epoch, a quick run of this many representatives "
                                 "(the epoch's micro-batches or more: every batch once)")
    projection.add_argument("--out", type=Path, required=True)
    _catalog_option(projection, "rows of this catalog of your own too (--sftbench-catalog)")

    frontier = commands.add_parser("frontier", help="the longest max_length of a row that fits a card of a given "
                                                    "size, each length trained in a fresh process")
    frontier.add_argument("row", help="a pytest id such as 'test_full_max_length[qwen-7b-chat-2048]'")
    frontier.add_argument("--card-mib", type=float,
                          help="the card's memory in MiB, as nvidia-smi's memory.total says (default: this GPU's)")
    frontier.add_argument("--step", type=int, default=512, help="tokens: how close to search between the seed's lengths")
    frontier.add_argument("--out", type=Path, required=True)
    _catalog_option(frontier, "a row of this catalog of your own (--sftbench-catalog)")

    frontiers = commands.add_parser("frontiers", help="the frontiers `frontier` found (its --out folders) as one "
                                    "table beside the seed's last lengths that ran, and one plot")
    frontiers.add_argument("folders", nargs="+", type=Path, help="--out folders of `python -m sftbench frontier`")
    frontiers.add_argument("--out", type=Path, help="write the Markdown here instead of printing it")
    frontiers.add_argument("--plot", type=Path, help="a PNG of each row's card need by max_length")

    upgrade = commands.add_parser("upgrade", help="runs of a candidate stack against the baselines: step, kernel "
                                                  "families, memory, operators; flash-attn's kernels alone beside them")
    upgrade.add_argument("--baselines", type=Path, required=True, help="the baselines folder the runs are judged against")
    upgrade.add_argument("--run", action="append", required=True, metavar="NAME=DIR",
                         help="a run's results/<gpu>/ folder, named (repeatable)")
    upgrade.add_argument("--attention", action="append", default=[], metavar="NAME=JSON",
                         help="`sftbench attention` output of a version, the baselines' version first (repeatable)")
    upgrade.add_argument("--title", default="Upgrade report")
    upgrade.add_argument("--out", type=Path, help="write here instead of standard output")

    kernels_command = commands.add_parser("kernels", help="what each configuration's GPU time went to: kernel families "
                                                            "and the largest kernels")
    kernels_command.add_argument("folder", type=Path, help="a results/<gpu>/ or baselines/<gpu>/ folder")
    kernels_command.add_argument("--top", type=int, default=5, help="kernels shown per configuration")
    kernels_command.add_argument("--json", action="store_true",
                                 help="every kernel of every configuration: names once, then [name index, GPU-seconds]")

    attention = commands.add_parser("attention", help="flash-attn's kernels alone at results' own shapes, projected "
                                                      "over their epochs (a diagnostic)")
    attention.add_argument("results", nargs="+", type=Path, help="results or baselines of batch-1 flash-attn rows")
    attention.add_argument("--repeats", type=int, default=5, help="traced blocks of 10 calls per sequence length")
    attention.add_argument("--out", type=Path, required=True, help="the JSON to write")

    selftest = commands.add_parser("selftest", help="does the suite flag injected slow-downs and memory growth, and "
                                                    "nothing in clean reruns? (sftbench.selftest)")
    selftest.add_argument("records", nargs="*", type=Path, help="run records (<results>/history/*.json) or folders")
    selftest.add_argument("--run", metavar="PYTEST_ARGS",
                          help="first make the runs: write baselines, two clean reruns, GPU+memory and host injection, "
                               "each `pytest tests/benchmarks PYTEST_ARGS` (e.g. \"-k 'qwen-7b and not gptq'\")")
    selftest.add_argument("--stages", default=",".join(STAGES),
                          help=f"the stages --run makes, comma-separated (default: all, {','.join(STAGES)})")
    selftest.add_argument("--results", type=Path, default=Path("results/selftest"), help="where --run's runs write")
    selftest.add_argument("--out", type=Path, required=True, help="the summary JSON")
    selftest.add_argument("--markdown", type=Path, help="also a short Markdown page")

    args = parser.parse_args(argv)
    commands = {"models": _models, "baselines": _baselines, "report": _report, "history": _history, "run": _run,
                "profile": _profile, "projection": _projection, "frontier": _frontier, "frontiers": _frontiers,
                "kernels": _kernels, "upgrade": _upgrade, "attention": _attention, "selftest": _selftest}
    # Quoted as a shell needs it, so that the command line a report shows can be pasted back.
    args.command_line = shlex.join(["python", "-m", "sftbench", *(sys.argv[1:] if argv is None else argv)])
    try:
        code = commands[args.command](args)
        sys.stdout.flush()  # output still buffered meets a reader that has gone here, not at exit
    except BrokenPipeError:
        # The reader stopped reading (`| head`): the rest is not wanted. Python flushes stdout again at exit;
        # pointed at /dev/null, that flush cannot fail (the signal module's note on SIGPIPE).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except BadRules as error:  # any command that classifies kernels
        print(f"sftbench: {error}", file=sys.stderr)
        return 2
    return code


def _catalog_option(parser, help_text: str) -> None:
    parser.add_argument("--catalog", type=Path, action="append", default=[], metavar="FILE", help=help_text)


def _user_tables(paths: list[Path]) -> tuple[catalog.Table, ...] | None:
    """The tables of these user catalogs (none: no import of torch), or None after the one line of what is wrong."""
    if not paths:
        return ()
    from sftbench import user_catalog

    try:
        return user_catalog.load(paths)
    except catalog.CatalogError as error:
        print(f"sftbench: --catalog {error}", file=sys.stderr)
        return None


def _rows(ids: list[str], catalogs: list[Path]) -> list[catalog.Row] | None:
    """The rows of these pytest ids, the seed's or those of the user catalogs, or None after one line naming the
    unknown ones (or what is wrong with a catalog)."""
    tables = _user_tables(catalogs)
    if tables is None:
        return None
    try:
        return catalog.rows_by_id(ids, tables)
    except catalog.UnknownRow as error:
        print(f"sftbench: {error}", file=sys.stderr)
        return None


def _models(args) -> int:
    seed = [r.spec for t in catalog.seed_tables() for r in t.rows]
    # Importing torch and transformers and building each model take 10-20 s of silence otherwise.
    print(f"sftbench: building the {len({spec.model_type for spec in seed})} seed model types on the meta device "
          "to count their parameters ...", file=sys.stderr, flush=True)
    from sftbench.models import models_summary

    summary = models_summary(sorted({(spec.lora_rank, spec.lora_targets) for spec in seed if spec.sft_type == "lora"}))
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        for model_type, info in summary.items():
            lora = ", ".join(f"{label} {count:,}" for label, count in info["trainable_params"].items())
            print(f"{model_type:28} {info['total_params']:>16,}  {lora}")
    return 0


def _baselines(args) -> int:
    from sftbench.storage.baselines import BaselineStore, listing
    from sftbench.storage.files import repository_root

    folder = args.dir or repository_root() / "baselines"
    if problem := _no_baselines(folder, "--dir"):
        print(f"sftbench: {problem}" + ("" if args.dir else " (give --dir, or run from the repository)"),
              file=sys.stderr)
        return 2
    baselines, errors = BaselineStore(folder).scan()
    entries = listing(baselines)
    if args.json and (entries or not errors):
        print(json.dumps(entries, indent=1))
    if not args.json and entries:
        print(aligned(["GPU", "row", "outcome", "GPU-min", "busy %", "wall min", "max reserved MiB", "host",
                       "largest kernel family", "largest at the memory peak"], [_listed(e) for e in entries]))
    for error in errors:
        print(f"sftbench: {error}", file=sys.stderr)
    return 2 if errors else 0


def _no_baselines(folder: Path, option: str) -> str | None:
    """Why `folder`, given as `option`, holds no baselines (one line), or None. It holds a folder per GPU
    (baselines/<gpu>/<key>.json)."""
    if not folder.is_dir():
        return f"no baselines folder {folder}"
    if any(folder.glob("*/*.json")):
        return None
    if any(folder.glob("*.json")):
        return (f"no baselines in {folder}: it is one GPU's folder; {option} takes the folder above it, "
                f"{folder.resolve().parent}")
    return f"no baselines in {folder} (they are in a folder per GPU below it)"


def _listed(entry: dict) -> list[str]:
    """A baseline's line in `sftbench baselines`: what its verdicts compare, its host, its largest family and its
    largest memory category at the peak."""
    def number(value, digits):
        return "" if value is None else f"{value:.{digits}f}"

    host = entry["host"] or []
    family, category = entry["largest_family"], entry["largest_memory_category"]
    return [entry["gpu"] or "", f"{entry['test']}[{entry['case_id']}]", entry["outcome"],
            number(entry["gpu_minutes_per_1000_samples"], 3), number(entry["gpu_busy_pct"], 0),
            number(entry["minutes_per_1000_samples"], 2), number(entry["max_reserved_mib"], 0),
            (host[0][:12] + (f" +{len(host) - 1}" if len(host) > 1 else "")) if host else "",
            f"{family['family']} {family['share_pct']:.0f}%" if family else "",
            f"{category['category']} {category['share_pct']:.0f}%" if category else ""]


def aligned(header: list[str], rows: list[list[str]]) -> str:
    """A plain-text table: a header and its rule, columns padded to their widest cell, numbers right-aligned."""
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows)]
    numeric = [all(not cell or cell.replace(".", "", 1).isdigit() for cell in column[1:])
               for column in zip(header, *rows)]
    def line(cells):
        return "  ".join(cell.rjust(w) if right else cell.ljust(w) for cell, w, right in zip(cells, widths, numeric)).rstrip()
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def _report(args) -> int:
    from sftbench.diagnostics import memory_at_peak
    from sftbench.report import markdown
    from sftbench.storage.results import scan_results

    if not args.folder.is_dir():
        print(f"sftbench: {args.folder} is not a folder of results (results/<gpu>/ or baselines/<gpu>/)",
              file=sys.stderr)
        return 2
    results, problems = scan_results(args.folder)
    beside = None
    if args.beside:
        beside, beside_problems = scan_results(args.beside) if args.beside.is_dir() else ({}, [])
        problems += beside_problems
        if not beside:
            print(f"sftbench: --beside {args.beside}: no results there (results/<gpu>/ or baselines/<gpu>/)",
                  file=sys.stderr)
            return 2
    for problem in problems:
        print(f"sftbench: skipped {problem}", file=sys.stderr)
    if not results:
        inside = sorted(str(p.parent) for p in args.folder.glob("*/*.json") if p.parent.name != "history")
        hint = f"; the folders below it that hold results: {', '.join(dict.fromkeys(inside))}" if inside else ""
        print(f"sftbench: no results in {args.folder} (results/<gpu>/ or baselines/<gpu>/){hint}", file=sys.stderr)
        return 2
    tables = _user_tables(args.catalog)
    if tables is None:
        return 2
    names = [t.name for t in (*catalog.seed_tables(), *tables)]
    unknown = [name for name in args.table if name not in names]
    if unknown:
        print(f"sftbench: --table {unknown[0]}: no such table; the tables: {', '.join(names)}", file=sys.stderr)
        return 2
    text = markdown(results, args.plots, memory_at_peak(args.diagnostics) if args.diagnostics else None, tables,
                    beside, only=set(args.table))
    if not _print_or_write(args.out, text):
        return 2
    return 2 if problems else 0


def _print_or_write(path: Path | None, text: str) -> bool:
    """A command's page printed, or written to its --out file where given (_write_output)."""
    if not path:
        print(text)
        return True
    return _write_output(path, text)


def _write_output(path: Path, text: str) -> bool:
    """A command's output file, written atomically (its folder made); False, said in one line, where it cannot be."""
    from sftbench.storage.files import NotWritten, write_atomically

    try:
        write_atomically(path, text)
    except NotWritten as error:
        print(f"sftbench: {error}", file=sys.stderr)
        return False
    return True


def _history(args) -> int:
    from sftbench import history

    if (args.summary or args.cost or args.beside) and args.plots:
        print("sftbench: --plots draws the history page; --summary, --cost and --beside have no plots", file=sys.stderr)
        return 2
    records, problems = history.records_of(args.folder) if args.folder.is_dir() else ([], [])
    for problem in problems:
        print(f"sftbench: {problem}", file=sys.stderr)
    if not records:
        print(f"sftbench: no run records in {args.folder} (each pytest run of the benchmarks writes one to "
              "<results>/history/)", file=sys.stderr)
        return 2
    runs = history.runs(records)
    if args.beside:
        other_records, other_problems = history.records_of(args.beside) if args.beside.is_dir() else ([], [])
        for problem in other_problems:
            print(f"sftbench: --beside: {problem}", file=sys.stderr)
        problems += other_problems
        others = history.runs(other_records)
        if not others:
            print(f"sftbench: --beside {args.beside}: no run records there", file=sys.stderr)
            return 2
    if args.plots:  # about half a second a plot
        print(f"sftbench: drawing the plots of {len(history.trends(runs))} configurations in {args.plots} ...",
              file=sys.stderr, flush=True)
    text = (history.summary(runs[-1]) if args.summary else history.cost(runs[-1]) if args.cost
            else history.side_by_side(runs[-1], others[-1]) if args.beside else history.page(runs, args.plots))
    if not _print_or_write(args.out, text):
        return 2
    return 1 if problems else 0


def _run(args) -> int:
    from sftbench.launcher import Launcher
    from sftbench.render import describe
    from sftbench.result import Metrics
    from sftbench.spec import InvalidSpec, RunOptions
    from sftbench.storage.files import NotWritten
    from sftbench.storage.results import ResultStore

    rows = _rows(args.rows, args.catalog)
    if rows is None:
        return 2
    options = RunOptions(full_epoch=args.full_epoch, attn_fallback=args.attn_fallback)
    changes = {} if args.samples is None else {"samples": args.samples}
    try:
        specs = [(row.node_id, row.spec.replace(**changes, **({"attention": kernel} if kernel else {})))
                 for row in rows for kernel in (args.attention or [None])]
    except InvalidSpec as error:
        print(f"sftbench: {error}", file=sys.stderr)
        return 2
    if _cannot_train(specs, args.out, args.attn_fallback, "--attn-fallback"):
        return 2
    launcher, failed = Launcher(), 0
    store = ResultStore(args.out) if args.out else None
    for name, spec in specs:
        result = launcher.run(spec, options)
        print(f"{name} [{spec.key}]: {describe(Metrics.of(result))}", flush=True)
        failed += result.outcome == "error"
        if store is not None:
            try:
                store.write(result)  # a row given twice is run twice: both results are kept
            except NotWritten as error:
                print(f"sftbench: {error}", file=sys.stderr)
                failed += 1
    return 1 if failed else 0


def _cannot_train(specs: list[tuple[str, CaseSpec]], out: Path | None, attn_fallback: str | None = None,
                  fallback_option: str | None = None) -> bool:
    """True, after one line saying why, where this machine cannot train these (name, spec) or `out` (--out) cannot
    be written: checked before anything trains. `fallback_option`: the command's option that picks a kernel
    where flash-attn is missing, if it has one."""
    from sftbench.runner import cannot_run
    from sftbench.storage.files import not_writable

    refused: dict[str, dict[str, None]] = {}  # reason: the names it holds for, in order
    for name, spec in specs:
        if reason := cannot_run(spec, attn_fallback, fallback_option):
            refused.setdefault(reason, {})[name] = None
    if refused:
        print("sftbench: " + "; ".join(f"cannot run {', '.join(names)}: {reason}" for reason, names in refused.items()),
              file=sys.stderr)
        return True
    problem = out and not_writable(out)
    if problem:
        print(f"sftbench: --out {problem}: nothing was trained", file=sys.stderr)
        return True
    return False


def _profile(args) -> int:
    rows = _rows([args.row], args.catalog)
    if rows is None or _cannot_train([(rows[0].node_id, rows[0].spec)], args.out):
        return 2
    from sftbench.diagnostics.step_profile import profile_row

    report = profile_row(rows[0], args.out, steps=args.steps, blocks=args.blocks, memory=args.memory,
                         timing=not args.no_timing, clock=args.clock, tracing=args.tracing)
    print(json.dumps(report, indent=1))
    return 0


def _projection(args) -> int:
    rows = _rows(args.rows, args.catalog)
    if rows is None or _cannot_train([(row.node_id, row.spec) for row in rows], args.out):
        return 2
    from sftbench.diagnostics.projection import check_projection, markdown_table

    table = check_projection(rows, args.out, quick_runs=args.quick_runs, settle=args.settle, steps=args.steps,
                             samples=args.samples, reference_steps=args.reference_steps,
                             log=lambda line: print(line, flush=True))
    print("\n" + markdown_table(table))
    return 0


def _frontier(args) -> int:
    rows = _rows([args.row], args.catalog)
    if rows is None or _cannot_train([(rows[0].node_id, rows[0].spec)], args.out):
        return 2
    from sftbench import environment

    gpu = environment.gpu_info()
    card_mib = args.card_mib or gpu["gpu_memory_mib"]
    if gpu["gpu"] == "cpu" or not card_mib:
        print("sftbench: frontier: no CUDA GPU here: what a case needs of a card is measured on one", file=sys.stderr)
        return 2
    from sftbench.diagnostics.frontier import (
        FrontierError,
        find_frontier,
        write_frontier,
    )
    from sftbench.launcher import Launcher
    from sftbench.spec import RunOptions
    from sftbench.storage.results import ResultStore

    launcher, store = Launcher(), ResultStore(args.out)
    options = RunOptions(representative_steps=4, settle_steps=0)  # memory is the question

    def run(spec):
        result = launcher.run(spec, options)
        store.write(result)
        return result

    try:
        frontier, trials = find_frontier(rows[0], card_mib, run, step=args.step, log=lambda line: print(line, flush=True))
    except FrontierError as error:
        print(f"sftbench: frontier: {error}", file=sys.stderr)
        return 1
    finally:
        launcher.close()
    path = write_frontier(args.out, rows[0], card_mib, frontier, trials)
    fits = f"max_length {frontier}" if frontier else "not even the shortest length"
    print(f"{rows[0].node_id} on a card of {card_mib:.0f} MiB: {fits} fits ({len(trials)} lengths tried; {path})")
    return 0


def _frontiers(args) -> int:
    from sftbench.report.frontier import (
        BadFrontier,
        frontier_markdown,
        frontier_plot,
        read_frontier,
    )

    try:
        frontiers = [read_frontier(folder) for folder in args.folders]
    except BadFrontier as error:
        print(f"sftbench: frontiers: {error}", file=sys.stderr)
        return 2
    link = None
    if args.plot:
        frontier_plot(frontiers, args.plot)
        link = os.path.relpath(args.plot, args.out.parent if args.out else Path.cwd())  # from the page to the plot
    return 0 if _print_or_write(args.out, frontier_markdown(frontiers, link)) else 2


def _upgrade(args) -> int:
    from sftbench.report.upgrade import upgrade_markdown
    from sftbench.storage.baselines import BaselineStore
    from sftbench.storage.results import scan_results

    if problem := _no_baselines(args.baselines, "--baselines"):
        print(f"sftbench: {problem}", file=sys.stderr)
        return 2
    named = {}
    for option, values in (("--run", args.run), ("--attention", args.attention)):
        for value in values:
            name, sep, path = value.partition("=")
            if not sep or not name or not Path(path).exists():
                print(f"sftbench: {option} takes NAME=PATH of an existing path, got {value!r}", file=sys.stderr)
                return 2
            named.setdefault(option, {})[name] = Path(path)
    runs = {}
    for name, folder in named["--run"].items():
        runs[name], problems = scan_results(folder)
        if problems or not runs[name]:
            print(f"sftbench: --run {name}: " + ("; ".join(problems) or f"no results in {folder}"), file=sys.stderr)
            return 2
    try:
        attention = {name: json.loads(path.read_text(encoding="utf-8"))
                     for name, path in named.get("--attention", {}).items()}
        text = upgrade_markdown(args.title, BaselineStore(args.baselines), runs, attention, args.command_line)
    except (OSError, ValueError, KeyError) as error:
        print(f"sftbench: upgrade: {type(error).__name__}: {error}", file=sys.stderr)
        return 2
    return 0 if _print_or_write(args.out, text) else 2


def _kernels(args) -> int:
    from sftbench import kernels
    from sftbench.storage.results import scan_results

    results, problems = scan_results(args.folder) if args.folder.is_dir() else ({}, [f"{args.folder} is not a folder"])
    for problem in problems:
        print(f"sftbench: skipped {problem}", file=sys.stderr)
    traced = [r for r in results.values() if kernels.epoch_families(r.kernels)]
    if not traced:
        print(f"sftbench: no results with kernel names in {args.folder}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(kernels.kernel_table(traced), indent=1))
        return 2 if problems else 0
    for result in traced:
        families = kernels.epoch_families(result.kernels)
        total = sum(families.values())
        print(f"{result.key}: " + ", ".join(f"{family} {100 * seconds / total:.1f}%" for family, seconds in families.items()))
        table = kernels.kernel_table([result])
        for index, seconds in table["configurations"][result.key][:args.top]:
            name = table["names"][index]
            print(f"  {100 * seconds / total:5.1f}%  {kernels.family_of(name):28} {name[:110]}")
    return 2 if problems else 0


def _attention(args) -> int:
    from sftbench import environment
    from sftbench.diagnostics.attention import attention_kernels, unsupported
    from sftbench.storage.results import read_result, scan_results
    from sftbench.storage.schema import StorageError

    results = []
    for path in args.results:
        try:
            found, problems = scan_results(path) if path.is_dir() else ({"": read_result(path)}, [])
        except StorageError as error:
            problems = [str(error)]
        if problems:
            print(f"sftbench: {problems[0]}", file=sys.stderr)
            return 2
        if not found:
            print(f"sftbench: attention: no results in {path}", file=sys.stderr)
            return 2
        results += found.values()
    problems = [problem for result in results if (problem := unsupported(result))]
    if problems:
        print("sftbench: attention: " + "; ".join(problems), file=sys.stderr)
        return 2
    try:
        environment.attention_kernel("flash_attention_2", fallback_option=None)  # the kernels it times
    except environment.MissingFlashAttn as error:
        print(f"sftbench: attention: {error}", file=sys.stderr)
        return 2
    measured = []
    for result in results:
        measured.append(attention_kernels(result, repeats=args.repeats))
        minutes = measured[-1]["gpu_minutes_per_1000_samples"]
        print(f"{result.key}: flash-attn {measured[-1]['flash-attn']}: " + ", ".join(
            f"{family} {value:.4f} GPU-min/1000" for family, value in minutes.items()), flush=True)
    return 0 if _write_output(args.out, json.dumps(measured, indent=1) + "\n") else 2


def _selftest(args) -> int:
    from sftbench import selftest
    from sftbench.storage.files import NotWritten
    from sftbench.storage.records import read_records, write_selftest

    records = list(args.records)
    stages = args.stages.split(",")
    if unknown := sorted(set(stages) - set(selftest.STAGES)):
        print(f"sftbench: selftest: unknown stages {', '.join(unknown)}; stages: {', '.join(selftest.STAGES)}",
              file=sys.stderr)
        return 2
    if args.run is not None:
        records += selftest.run_stages(shlex.split(args.run), args.results, stages)
    read, problems = read_records(records)
    for problem in problems:
        print(f"sftbench: selftest: {problem}", file=sys.stderr)
    if problems:
        return 2
    try:
        summary = selftest.summarize(read)
    except ValueError as error:
        print(f"sftbench: selftest: {error}", file=sys.stderr)
        return 2
    try:
        write_selftest(args.out, summary)
    except NotWritten as error:
        print(f"sftbench: {error}", file=sys.stderr)
        return 2
    if args.markdown and not _write_output(args.markdown, selftest.markdown(summary)):
        return 2
    failed = sum(rerun["failures"] for rerun in summary["clean_reruns"])
    sizes = ", ".join(str(len(rerun["configurations"])) for rerun in summary["clean_reruns"]) or "no"
    found = [f"{selftest.failures(failed)} in {len(summary['clean_reruns'])} clean reruns of {sizes} configurations"]
    found += [f"{name} flagged {stage['flagged']} of {len(stage['configurations'])}"
              for name, stage in summary["injected"].items()]
    found += [f"{knob} flagged {stage['flagged']} of {len(stage['configurations'])} ({stage['named_right']} naming "
              f"{' and '.join(stage['families'])})" for knob, stage in summary["family_injected"].items()]
    found += [f"{knob} flagged {stage['flagged']} of {len(stage['configurations'])} ({stage['named_right']} with "
              f"{stage['category']} grown most)" for knob, stage in summary["memory_injected"].items()]
    print("sftbench: selftest: " + "; ".join(found))
    return 0


if __name__ == "__main__":
    sys.exit(main())
