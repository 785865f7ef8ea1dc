"""Judge stored runs again with today's verdicts: what the family thresholds of this checkout make of them.

    mkdir -p /tmp/0849 && tar xJf docs/runs-h100/2026-12-07T0849-results/results.tar.xz -C /tmp/0849
    python scripts/judge_again.py /tmp/0849/s19clean1:/tmp/0849/matrix /tmp/0849/s19attention3:/tmp/0849/matrix

Each argument is RESULTS:BASELINES, two folders of results (or folders holding one GPU model's folder of them);
each result is compared with the baseline of the same file name. Per comparison it prints the rows that fail and
the families beyond their thresholds, the attention and GEMM families' change against the GPU's pace over their
threshold, the largest |change| / threshold of any judged family, and how far wall minutes and the host's own pace
(the burst of kernel launches before each timed step) moved. Last, over all comparisons, how far wall minutes moved by
how busy the GPU was in the baseline: the host-bound rows move with their host, the GPU-bound ones hardly.

Each stored result is judged once. A live run measures a configuration whose wall time alone regressed once more, in a
fresh process, before it fails the row (`verdicts.wall_time_alone`); a stored result cannot be, so such a row is
marked "wall time alone" here and counted apart.
"""

from __future__ import annotations

import sys
from itertools import pairwise
from pathlib import Path
from statistics import pstdev

from sftbench.storage.results import read_result
from sftbench.verdicts import Tolerances, compare, wall_time_alone

SHOWN = ("attention forward", "attention backward", "GEMM")
BUSY_BINS = (0, 40, 60, 85, 101)  # % of the baseline's wall time the GPU was busy


def result_files(folder: Path) -> dict[str, Path]:
    """The folder's result files by name, or those of the one GPU model's folder inside it."""
    files = {p.name: p for p in folder.glob("*.json")}
    if not files:
        files = {p.name: p for p in folder.glob("*/*.json") if p.parent.name != "history"}
    return files


def main(pairs: list[str]) -> None:
    by_busy = []  # (the baseline's GPU busy %, wall minutes' move %) of every comparison
    for pair in pairs:
        runs, baselines = (result_files(Path(part)) for part in pair.split(":"))
        largest, failing, alone, moves = (0.0, ""), 0, 0, []
        print(f"== {pair}")
        for name in sorted(runs.keys() & baselines.keys()):
            result, baseline = read_result(runs[name]), read_result(baselines[name])
            verdict = compare(result, baseline, Tolerances())
            wall, host = wall_and_host_moves(result, baseline)
            moves.append((wall, host))
            if baseline.kernels and baseline.kernels.busy_pct is not None and wall is not None:
                by_busy.append((baseline.kernels.busy_pct, wall))
            judged = [f for f in verdict.families if f.threshold_pct and f.change_pct is not None]
            beyond = [family_move(f) for f in judged if f.verdict != "same"]
            shown = [family_move(f) for f in judged if f.family in SHOWN]
            failing += verdict.verdict == "regression"
            once_more = wall_time_alone(verdict)
            alone += once_more
            mark = " [wall time alone: a live run measures it once more]" if once_more else ""
            largest = max(largest, *((abs(f.change_pct) / f.threshold_pct, f"{f.family} of {name}") for f in judged))
            print(f"{verdict.verdict:10} {name.removesuffix('.json'):72} beyond: {', '.join(beyond) or 'none'}; "
                  f"{'; '.join(shown)}{mark}")
        apart = f" ({alone} in wall time alone)" if alone else ""
        print(f"{failing} of {len(runs.keys() & baselines.keys())} rows failing{apart}; largest |change| / threshold "
              f"{largest[0]:.2f} ({largest[1]}); {_range('wall minutes', [wall for wall, _ in moves])}, "
              f"{_range('the host probe', [host for _, host in moves])}")
    bins = [(f"{low}-{min(high, 100)}%", [wall for busy, wall in by_busy if low <= busy < high])
            for low, high in pairwise(BUSY_BINS)]
    print("wall minutes by the baseline's GPU busy: " + "; ".join(
        f"{label}: {_range(f'{len(walls)} moved', walls)} (sd {pstdev(walls):.1f}%)"
        for label, walls in [*bins, ("all", [wall for _, wall in by_busy])] if walls))


def family_move(finding) -> str:
    """A family finding as 'family change/threshold', in % against the GPU's pace."""
    return f"{finding.family} {finding.change_pct:+.2f}/{finding.threshold_pct:.2f}"


def wall_and_host_moves(result, baseline) -> tuple[float | None, float | None]:
    """Wall minutes and the host's own pace between timed steps (Timing.host_probe_ms) against the baseline, in %."""
    pairs = ((result.timing.minutes_per_1000_samples, baseline.timing.minutes_per_1000_samples),
             (result.timing.host_probe_ms, baseline.timing.host_probe_ms))
    return tuple(None if None in (now, before) else 100 * (now / before - 1) for now, before in pairs)


def _range(what: str, values: list[float | None]) -> str:
    values = [v for v in values if v is not None]
    return f"{what} {min(values):+.1f}% to {max(values):+.1f}%" if values else f"{what} not measured"


if __name__ == "__main__":
    main(sys.argv[1:])
