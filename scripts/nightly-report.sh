#!/usr/bin/env bash
# What the nightly GPU job (.github/workflows/nightly-gpu.yml) publishes from a results folder:
# per GPU model (results/<gpu>/) the report of its results, then the history page of the run records
# (results/history/) with a PNG per configuration, and the newest run's summary, regressions first.
# Usage: scripts/nightly-report.sh RESULTS OUT      PYTHON=python3 (the interpreter with sftbench)
# Writes OUT/report-<gpu>.md (+ plots in OUT/report-<gpu>/), OUT/history.md (+ OUT/history/), OUT/summary.md.
# Exit status: 0 when every command succeeded, else 1 (each is still run).
set -uo pipefail
results=${1:?usage: scripts/nightly-report.sh RESULTS OUT}
out=${2:?usage: scripts/nightly-report.sh RESULTS OUT}
python=${PYTHON:-python3}
mkdir -p "$out"
status=0
for folder in "$results"/*/; do
    gpu=$(basename "$folder")
    [ "$gpu" = history ] && continue
    "$python" -m sftbench report "$folder" --out "$out/report-$gpu.md" --plots "$out/report-$gpu" || status=1
done
"$python" -m sftbench history "$results/history" --out "$out/history.md" --plots "$out/history" || status=1
"$python" -m sftbench history "$results/history" --summary --out "$out/summary.md" || status=1
exit $status
