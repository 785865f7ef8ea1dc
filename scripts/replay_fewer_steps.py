"""Replay stored self-test runs as if they had measured less: what a cheaper quick mode would have concluded.

    python scripts/replay_fewer_steps.py docs/runs-h100/2026-12-06T1907-results
    mkdir -p /tmp/2140 && tar xJf docs/runs-h100/2026-12-06T2140-results/results.tar.xz -C /tmp/2140
    python scripts/replay_fewer_steps.py /tmp/2140   # a run whose results are kept compressed

Each folder holds a self-test's results by stage (update/ are the baselines; clean*, attention3, gemm3 and the memory
knobs' runs are compared with them). For each run it prints:
- the family verdicts with each run's family repeats cut to 2 and to 1 per batch (from 3), against the baseline cut
  alike: the families flagged, and the largest threshold of the attention and GEMM families;
- the wall minutes projected from every other timed step (half of them) against all of them, in %.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

from sftbench.data import SyntheticCorpus, epoch_batches
from sftbench.storage.results import read_result
from sftbench.trainer import project_epoch
from sftbench.verdicts import Tolerances, compare


def with_repeats(result, kept: int):
    """The result with only the first `kept` repeats of each repeated step (repeats follow what they repeat)."""
    result = copy.deepcopy(result)
    seen: dict[int, int] = {}
    steps = []
    for step in result.kernels.steps:
        if step.repeat_of is not None:
            seen[step.repeat_of] = seen.get(step.repeat_of, 0) + 1
            if seen[step.repeat_of] > kept:
                continue
        steps.append(step)
    result.kernels.steps = steps
    return result


def half_steps_change_pct(result) -> float:
    timing, case = result.timing, result.case
    corpus = SyntheticCorpus(result.model_shape["vocab_size"], case["samples"])
    epoch = [b.tokens for b in epoch_batches(corpus.lengths, case["batch_size"], case["max_length"])]
    whole, half = (project_epoch(timing.step_tokens[part], timing.step_durations_s[part], epoch,
                                 timing.epoch_optimizer_steps, timing.optimizer_step_s)
                   for part in (slice(None), slice(0, None, 2)))
    return 100 * (half / whole - 1)


def main(folders: list[str]) -> None:
    for folder in map(Path, folders):
        baselines = {p.name: read_result(p) for p in (folder / "update").glob("*.json")}
        for stage in sorted(p for p in folder.iterdir() if p.is_dir() and p.name != "update"):
            for path in sorted(stage.glob("*.json")):
                if path.name not in baselines:
                    continue
                result, baseline = read_result(path), baselines[path.name]
                line = [f"{stage.name:13} {result.key:75}", f"half the timed steps {half_steps_change_pct(result):+.2f}%"]
                for kept in (2, 1):
                    verdict = compare(with_repeats(result, kept), with_repeats(baseline, kept), Tolerances())
                    flagged = sorted(f.family for f in verdict.families if f.verdict != "same")
                    largest = max((f.threshold_pct for f in verdict.families if f.threshold_pct is not None
                                   and f.family in ("attention forward", "attention backward", "GEMM")), default=None)
                    line.append(f"{kept} repeat(s): {', '.join(flagged) or 'none'} (largest threshold {largest:.2f}%)")
                print("; ".join(line))


if __name__ == "__main__":
    main(sys.argv[1:])
