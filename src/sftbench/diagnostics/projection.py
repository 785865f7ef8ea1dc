"""The quick mode's projection against a full epoch, on the GPU.

For each row: quick runs before and after one full epoch (so drift over the run shows), each in a
fresh process like a pytest case, every result stored under the output folder, then a table of
quick vs full. Quick-mode settings can be varied (settle steps, representative steps: each
combination is run) to calibrate them.

On a shared host the machine's speed drifts within minutes, so quick runs and a full epoch taken
minutes apart also differ by that drift. The "replayed" column separates the method from the
drift: the quick mode's projection computed from the full epoch's own steps at the batches the
quick mode would time (same moments, same host state).

GPU-minutes are compared the same way: a full epoch traces every step's kernels, and the quick runs
project theirs from their timed steps' kernels. A full epoch takes 11-17 minutes at 2048-8192 tokens.
`reference_steps` replaces it, for GPU time only, by a quick run of that many representatives (all of
them: every batch of the epoch), which traces each one's kernels without training the epoch's optimizer
steps. Its replayed column is the quick mode's projection from the same run's steps, the method's error
alone.

`python -m sftbench projection ROW... --out DIR [--reference-steps N]` runs it.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np

from sftbench import trainer
from sftbench.catalog import Row
from sftbench.data import Batch, SyntheticCorpus, epoch_batches
from sftbench.launcher import Launcher
from sftbench.render import describe
from sftbench.result import Metrics, Result, minutes_per_1000_samples
from sftbench.spec import RunOptions
from sftbench.storage.results import ResultStore


def check_projection(rows: list[Row], out: Path, *, quick_runs: int = 2, settle: list[int] | None = None,
                     steps: list[int] | None = None, samples: int | None = None, reference_steps: int | None = None,
                     log=print) -> list[dict]:
    """Run the plan for every row; write <out>/projection.json and return its entries.

    reference_steps: instead of a full epoch, a quick run of that many representatives (GPU-minutes only; the
    wall columns stay empty)."""
    defaults = RunOptions()
    settings = [RunOptions(settle_steps=s, representative_steps=n)
                for s, n in itertools.product(settle or [defaults.settle_steps], steps or [defaults.representative_steps])]
    out.mkdir(parents=True, exist_ok=True)
    launcher, store, table = Launcher(), ResultStore(out), []
    for row in rows:
        spec = row.spec.replace(samples=samples) if samples else row.spec
        before = quick_runs - quick_runs // 2
        reference = (RunOptions(full_epoch=True) if reference_steps is None
                     else RunOptions(representative_steps=reference_steps))
        plan = ([("quick", s) for s in settings] * before + [("reference", reference)]
                + [("quick", s) for s in settings] * (quick_runs // 2))
        full_result, quick = None, []
        for mode, options in plan:
            result = launcher.run(spec, options)
            log(f"{row.node_id} {mode} ({options.mode}) settle={options.settle_steps} "
                f"steps={options.representative_steps}: {describe(Metrics.of(result))}")
            store.write(result)
            if result.outcome != "ok":
                continue
            if mode == "reference":
                full_result = result
            else:
                quick.append((options.settle_steps, len(result.timing.step_durations_s),
                              result.timing.minutes_per_1000_samples, result.kernels.gpu_minutes_per_1000_samples))
        full_epoch = full_result is not None and reference.full_epoch
        full = full_result.timing.minutes_per_1000_samples if full_epoch else None
        full_gpu = None if full_result is None else full_result.kernels.gpu_minutes_per_1000_samples
        # Replayed with the first quick setting's representatives. Its timed repeats of the longest and the shortest
        # batch would replay as the same epoch step again, which leaves the mean per token count as it is.
        count = settings[0].representative_steps
        replayed = replay_quick(full_result, spec, count) if full_epoch else None
        replayed_gpu = None if full_gpu is None else replay_quick_gpu(full_result, spec, count)
        reference_name = "full epoch" if reference.full_epoch else (
            f"{len(full_result.timing.step_durations_s) if full_result else 'no'} micro-steps traced")
        # A reference without quick runs still gets its line, the quick columns empty.
        for settle_steps, timed, minutes, gpu in quick or ([(None,) * 4] if full_gpu or full else []):
            table.append({"row": row.node_id, "reference": reference_name, "settle": settle_steps, "steps": timed,
                          "quick_min": minutes, "full_min": full, "delta_pct": _delta(minutes, full),
                          "replayed_min": replayed, "quick_gpu_min": gpu, "full_gpu_min": full_gpu,
                          "gpu_delta_pct": _delta(gpu, full_gpu), "replayed_gpu_min": replayed_gpu})
    (out / "projection.json").write_text(json.dumps(table, indent=1) + "\n", encoding="utf-8")
    return table


def markdown_table(table: list[dict]) -> str:
    lines = ["| row | reference | settle | steps | quick min/1000 | full min/1000 | quick vs full "
             "| replayed on the full epoch | quick GPU-min | reference GPU-min | GPU quick vs reference "
             "| GPU replayed on the reference |", "|---" * 12 + "|"]
    for t in table:
        cells = [_num(t["quick_min"]), _num(t["full_min"]), _pct(t["delta_pct"]), _replayed(t["replayed_min"], t["full_min"]),
                 _num(t.get("quick_gpu_min")), _num(t.get("full_gpu_min")), _pct(t.get("gpu_delta_pct")),
                 _replayed(t.get("replayed_gpu_min"), t.get("full_gpu_min"))]
        lines.append(f"| {t['row']} | {t.get('reference', 'full epoch')} | {t['settle'] or ''} | {t['steps'] or ''} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value:+.1f}%"


def _replayed(replayed: float | None, full: float | None) -> str:
    return "" if replayed is None or not full else f"{replayed:.3f} ({100 * (replayed / full - 1):+.1f}%)"


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def _delta(quick: float | None, full: float | None) -> float | None:
    return None if quick is None or not full else 100 * (quick / full - 1)


def replay_quick_gpu(reference: Result, spec, count: int) -> float:
    """The quick mode's GPU-minute projection from a reference run's own traced steps (a full epoch, or a quick run
    of every batch): the kernel time of the `count` representatives and the repeats it would time, projected over
    the epoch's batches. A batch size the reference did not trace is interpolated between its traced neighbours."""
    batches = _epoch_batches(spec)
    ordered = trainer.by_size(batches)
    chosen = [b.tokens for b in trainer.representatives(ordered, count) + trainer.repeated(ordered)]
    traced: dict[int, list[float]] = {}
    for step in reference.kernels.projected_steps:
        if step.tokens > 0:
            traced.setdefault(step.tokens, []).append(step.seconds)
    xs = sorted(traced)
    chosen_s = np.interp(chosen, xs, [sum(traced[x]) / len(traced[x]) for x in xs])
    seconds = trainer.project_epoch(chosen, list(chosen_s), [b.tokens for b in batches],
                                    reference.timing.epoch_optimizer_steps, reference.kernels.optimizer_s or 0.0)
    return minutes_per_1000_samples(seconds, spec.samples)


def replay_quick(full: Result, spec, count: int) -> float:
    """The quick mode's wall minutes from a full epoch's own steps, which are the epoch's batches in order."""
    timing = full.timing
    real_tokens = [b.real_tokens for b in _epoch_batches(spec)]
    seconds = trainer.replay_quick(timing.step_tokens, real_tokens, timing.step_durations_s,
                                   timing.epoch_optimizer_steps, timing.optimizer_step_s, count)
    return minutes_per_1000_samples(seconds, spec.samples)


def _epoch_batches(spec) -> list[Batch]:
    lengths = SyntheticCorpus(1, spec.samples).lengths  # the samples' lengths do not depend on the vocabulary
    return epoch_batches(lengths, spec.batch_size, spec.max_length)
