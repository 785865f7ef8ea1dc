"""The longest max_length of a row that fits a card of a given size: `python -m sftbench frontier ROW --out DIR`.

A row's memory grows with max_length (its longest batch's activations). Each length is trained as a case of its own
(a fresh process, like a pytest case; every result stored under the output folder), and fits where it ran without an
OOM and its card need (MemoryPeaks.card_need_mib: the allocated peak and what the process held outside PyTorch's
allocator) is within the card. So a larger GPU finds a smaller card's frontier, and the card itself answers by its
OOMs. The search tries the seed's lengths, then 16384 (the corpus' longest sample has 16789 tokens), until one does
not fit, and halves the gap to the nearest `step` tokens.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from sftbench.catalog import Row
from sftbench.result import Result

LENGTHS = (512, 1024, 2048, 4096, 8192, 16384)
STEP = 512


class FrontierError(RuntimeError):
    """A length that could not run (not an OOM): the search cannot say whether it fits."""


@dataclass
class Trial:
    max_length: int
    outcome: str  # "ok" or "oom"
    card_need_mib: float | None
    max_reserved_mib: float | None
    fits: bool


def find_frontier(row: Row, card_mib: float, run, *, lengths=LENGTHS, step: int = STEP,
                  log=print) -> tuple[int | None, list[Trial]]:
    """(the longest max_length of `row` that fits `card_mib`, None where the shortest does not; the trials, in the
    order run). `run(spec) -> Result` trains one case."""
    trials: list[Trial] = []

    def fits(length: int) -> bool:
        result: Result = run(row.spec.replace(max_length=length))
        if result.outcome == "error":
            raise FrontierError(f"{row.node_id} at max_length {length} could not run: "
                                f"{result.message.splitlines()[0] if result.message else 'no message'}")
        need = result.memory.card_need_mib
        trial = Trial(length, result.outcome, need, result.memory.max_reserved_mib,
                      result.outcome == "ok" and need is not None and need <= card_mib)
        trials.append(trial)
        log(f"sftbench: {row.node_id} at max_length {length}: {trial.outcome}, card need "
            f"{'unknown' if need is None else f'{need:.0f} MiB'} -> {'fits' if trial.fits else 'does not fit'}")
        return trial.fits

    fitting = None
    for length in lengths:
        if not fits(length):
            break
        fitting = length
    else:
        return fitting, trials
    low, high = fitting or 0, length  # fits at low (or nothing does), not at high
    while (middle := (low + high) // 2 // step * step) > low:
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low or None, trials


def write_frontier(out: Path, row: Row, card_mib: float, frontier: int | None, trials: list[Trial]) -> Path:
    path = out / "frontier.json"
    path.write_text(json.dumps({"row": row.node_id, "card_mib": card_mib, "frontier": frontier,
                                "trials": [asdict(t) for t in trials]}, indent=1) + "\n", encoding="utf-8")
    return path
