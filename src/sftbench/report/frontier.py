"""The max_length frontier as a page: each searched row's longest max_length that fits a card (the frontier.json of
`python -m sftbench frontier`), beside the seed's last length that ran in the row's table, and one plot of what
each length needed of the card.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from sftbench import catalog
from sftbench.catalog import Row
from sftbench.diagnostics.frontier import LENGTHS, STEP
from sftbench.storage.results import ResultStore, read_result
from sftbench.storage.schema import StorageError


class BadFrontier(ValueError):
    """A folder without a readable frontier.json: one line naming it."""


@dataclass
class Frontier:
    row: Row
    card_mib: float
    frontier: int | None  # the longest max_length that fits; None where not even the shortest did
    trials: list[dict]  # frontier.json's trials, in the order run
    gpu: str | None  # the GPU that ran them, where the folder holds their results


def read_frontier(folder: Path) -> Frontier:
    path = folder / "frontier.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        row = catalog.rows_by_id([data["row"]])[0]
        card_mib, found, trials = float(data["card_mib"]), data["frontier"], list(data["trials"])
    except FileNotFoundError:
        raise BadFrontier(f"{folder}: no frontier.json (the --out folder of `python -m sftbench frontier`)") from None
    except (ValueError, KeyError, TypeError) as error:  # not JSON, a field missing, a row the catalog lacks
        raise BadFrontier(f"{path}: not a frontier of the seed's rows ({error})") from None
    results = ResultStore(folder).earlier()  # the trials' results, where `frontier` wrote them: the GPU that ran them
    try:
        gpu = read_result(results[0]).machine.get("gpu") if results else None
    except StorageError as error:
        raise BadFrontier(str(error)) from None
    return Frontier(row, card_mib, found, trials, gpu)


def seed_lengths(row: Row) -> tuple[int | None, int | None]:
    """(the longest max_length of the row's configuration that ran in the seed's table, the shortest that ran out of
    memory there); None where there is none."""
    same = [r for r in catalog.table(row.table).rows if r.spec.replace(max_length=row.spec.max_length) == row.spec]
    ran = [r.spec.max_length for r in same if r.seed_outcome == "ok"]
    oom = [r.spec.max_length for r in same if r.seed_outcome == "oom"]
    return max(ran, default=None), min(oom, default=None)


def frontier_markdown(frontiers: list[Frontier], plot_link: str | None = None) -> str:
    cards = sorted({f"{f.card_mib:.0f} MiB" + (f" ({f.gpu})" if f.gpu else "") for f in frontiers})
    lines = ["# The max_length frontier", "",
             (f"The longest max_length of each row that fits a card of {', '.join(cards)}: trained at the seed's "
              f"lengths ({LENGTHS[0]} to {LENGTHS[-2]}, then {LENGTHS[-1]}), each in a fresh process, until one does "
              f"not fit, then to the nearest {STEP} tokens between (`python -m sftbench frontier`). A length fits where "
              "it ran without running out of memory and its card need (the allocated peak and what the process held "
              "outside PyTorch's allocator) is within the card."), "",
             ("| row | fits up to | card need there (MiB) | the next length tried | seed: longest that ran | "
              "seed: out of memory from |"), "|---|---|---|---|---|---|"]
    for f in frontiers:
        fitting = {t["max_length"]: t for t in f.trials if t["fits"]}
        beyond = min((t for t in f.trials if not t["fits"]), key=lambda t: t["max_length"], default=None)
        next_tried = "none (the corpus' longest sample is 16789 tokens)" if beyond is None else \
            f"{beyond['max_length']}: " + ("out of memory" if beyond["outcome"] == "oom" else
                                           f"needs {beyond['card_need_mib']:.0f} MiB")
        ran, oom = seed_lengths(f.row)
        need = fitting[f.frontier]["card_need_mib"] if f.frontier else None
        lines.append(f"| `{f.row.node_id}` | {f.frontier or 'nothing'} | {'' if need is None else f'{need:.0f}'} | "
                     f"{next_tried} | {ran or 'none'} | {oom or '-'} |")
    if plot_link is not None:
        lines += ["", f"![card need by max_length]({plot_link})"]
    return "\n".join(lines) + "\n"


def frontier_plot(frontiers: list[Frontier], path: Path):
    """Each row's card need (GiB) by max_length, the lengths that did not fit marked, the card's size as a line;
    saved to path, and the matplotlib Figure returned."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 4.8), layout="constrained")
    axes = figure.subplots()
    for f in frontiers:
        trials = sorted(f.trials, key=lambda t: t["max_length"])
        ran = [t for t in trials if t["outcome"] == "ok" and t["card_need_mib"] is not None]
        line, = axes.plot([t["max_length"] for t in ran], [t["card_need_mib"] / 1024 for t in ran], marker="o",
                          label=f"{f.row.table.replace('_max_length', '')} {f.row.spec.model_type}")
        for t in trials:
            if not t["fits"]:
                need = t["card_need_mib"] if t["outcome"] == "ok" and t["card_need_mib"] else f.card_mib
                axes.plot(t["max_length"], need / 1024, marker="x", color=line.get_color(), markersize=10)
    for card in sorted({f.card_mib for f in frontiers}):
        axes.axhline(card / 1024, color="grey", linestyle="--")
        axes.annotate(f"card {card / 1024:.1f} GiB", (LENGTHS[0], card / 1024), textcoords="offset points", xytext=(0, 4),
                      fontsize="small", color="grey")
    axes.set_xscale("log", base=2)
    # The seed's lengths labelled; the lengths tried between them ticked only, as their labels would overlap.
    tried = {t["max_length"] for f in frontiers for t in f.trials}
    axes.set_xticks(LENGTHS, [str(n) for n in LENGTHS], fontsize="small")
    axes.set_xticks(sorted(tried - set(LENGTHS)), minor=True)
    axes.tick_params(axis="x", which="minor", labelbottom=False)
    axes.set_xlabel("max_length (tokens)")
    axes.set_ylabel("card need (GiB)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    gpus = sorted({f.gpu for f in frontiers if f.gpu})
    figure.suptitle("card need by max_length; x: did not fit" + (f" ({', '.join(gpus)})" if gpus else ""))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    return figure
