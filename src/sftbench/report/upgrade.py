"""An upgrade report: runs of a candidate stack against baselines of the current one, configuration by
configuration, in the step and in each kernel family, with flash-attn's kernels timed alone beside them.

Each run is a results folder compared with the baselines by today's rules (sftbench.verdicts.compare), so
the verdicts are those a pytest run of this sftbench would give. `python -m sftbench attention` outputs, one
per version, give what the attention kernels alone changed at the configurations' shapes.

`python -m sftbench upgrade --baselines DIR --run NAME=DIR... [--attention NAME=JSON...] --out FILE` writes it.
"""

from __future__ import annotations

from sftbench import render
from sftbench.result import Result
from sftbench.storage.baselines import BaselineStore
from sftbench.verdicts import FamilyFinding, Verdict, compare

ATTENTION = ("attention forward", "attention backward")
FAMILY_COLUMNS = (*ATTENTION, "GEMM", "activation and elementwise", "copies / casts / fills")
AGREEMENT_PP = 2.0  # a family's change and its kernels' change alone agree within this many percentage points


def family_finding(verdict: Verdict, family: str) -> FamilyFinding | None:
    return next((f for f in verdict.families if f.family == family), None)


def upgrade_markdown(title: str, store: BaselineStore, runs: dict[str, dict[str, Result]],
                     attention: dict[str, list[dict]], command: str = "") -> str:
    """The report: per run, a table of its configurations; then the kernels alone beside the families."""
    lines = [f"# {title}", ""] + ([f"Made by `{command}`.", ""] if command else [])
    judged: dict[str, dict[str, Verdict]] = {}
    for name, results in runs.items():
        judged[name] = {}
        lines += [f"## {name}", ""]
        first = next(iter(results.values()))
        lines += [(f"Results of {len(results)} configurations on {first.machine.get('gpu')} (GPU "
                   f"{first.machine.get('gpu_uuid')}), against the baselines by this sftbench's rules: each family's "
                   "change against the GPU's pace in the other families, and its threshold (✘: beyond it)."), ""]
        header = ["configuration", "verdict", "GPU-min", *FAMILY_COLUMNS, "max reserved", "host-side evidence"]
        lines += ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
        versions: set[str] = set()
        for key, result in sorted(results.items()):
            baseline = store.load(str(result.machine.get("gpu")), key)
            if baseline is None:
                lines.append(f"| `{key}` | no baseline | " + " | " * (len(header) - 2))
                continue
            verdict = compare(result, baseline.result)
            judged[name][key] = verdict
            versions |= {f"{package} {old} -> {new}" for package, (old, new) in verdict.versions.items()}
            step = _change(result.kernels.gpu_minutes_per_1000_samples,
                           baseline.result.kernels.gpu_minutes_per_1000_samples)
            memory = _change(result.memory.max_reserved_mib, baseline.result.memory.max_reserved_mib)
            families = [_family_cell(family_finding(verdict, family)) for family in FAMILY_COLUMNS]
            evidence = "; ".join(render.counts_text([c for c in verdict.counts if c.what == "torch operators"]))
            lines.append(f"| `{_short(key)}` | {render.label(verdict)} | {step} | " + " | ".join(families)
                         + f" | {memory} | {evidence or 'same operators'} |")
        lines += ["", "Versions that differ from the baselines': " + (", ".join(sorted(versions)) or "none") + ".", ""]
        lines += [f"- `{_short(key)}`: " + "; ".join(line for line in render.explain(verdict)
                                                   if not line.startswith(("versions", "settings")))
                  for key, verdict in sorted(judged[name].items()) if verdict.verdict in ("regression", "improvement")]
        lines.append("")
    if attention:
        lines += _kernels_alone(runs, judged, attention)
    return "\n".join(lines).rstrip() + "\n"


def _change(now: float | None, before: float | None) -> str:
    """A metric's change in %, or – where either run lacks it (an OOM, a run without the GPU kernel clock)."""
    return "–" if now is None or not before else f"{100 * (now / before - 1):+.2f}%"


def _family_cell(finding: FamilyFinding | None) -> str:
    if finding is None or not finding.before or not finding.after:
        return "" if finding is None else ("new" if finding.after else "gone")
    mark = " ✘" if finding.verdict == "worse" else ""
    threshold = "not judged" if finding.threshold_pct is None else f"{finding.threshold_pct:.3g}%"
    return f"{finding.change_pct:+.2f}% / {threshold}{mark}"


def _kernels_alone(runs: dict[str, dict[str, Result]], judged: dict[str, dict[str, Verdict]],
                   attention: dict[str, list[dict]]) -> list[str]:
    """flash-attn's kernels timed alone at each configuration's shapes, per version, against the first version
    given (the baselines'), beside the attention families' changes in the runs of the same name."""
    base_name, base = next(iter(attention.items()))
    lines = ["## flash-attn's kernels alone beside the attention families", "",
             (f"`python -m sftbench attention` at each configuration's traced sequence lengths, projected over its "
              f"epoch, against {base_name}; the family's own change in the run of that version beside it "
              f"(agreement: within {AGREEMENT_PP:g} percentage points)."), "",
             ("| version | configuration | family | kernels alone, GPU-min | change alone | change in the run | "
              "difference |"), "|---|---|---|---|---|---|---|"]
    before = {entry["key"]: entry for entry in base}
    for name, entries in attention.items():
        for entry in entries:
            for family in ATTENTION:
                alone = entry["gpu_minutes_per_1000_samples"][family]
                reference = before[entry["key"]]["gpu_minutes_per_1000_samples"][family]
                change = 100 * (alone / reference - 1)
                verdict = judged.get(name, {}).get(entry["key"])
                finding = None if verdict is None else family_finding(verdict, family)
                run = None if finding is None or not finding.before else finding.total_change_pct
                lines.append(f"| {name} | `{_short(entry['key'])}` | {family} | {alone:.4f} | {change:+.2f}% | {_pct(run)} | "
                             + ("" if run is None else f"{run - change:+.2f} pp"
                                + (" ✔" if abs(run - change) <= AGREEMENT_PP else " ✘")) + " |")
    return lines + [""]


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value:+.2f}%"


def _short(key: str) -> str:
    """A configuration key without the parts every row of this report shares."""
    return key.replace(".bf16", "").replace(".flash_attention_2", "").replace(".r8-DEFAULT", "")
