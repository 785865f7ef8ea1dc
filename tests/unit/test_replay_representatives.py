"""scripts/replay_representatives.py on the committed H200 projection references: what RunOptions'
representative_steps rests on."""

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).parents[2]
spec = importlib.util.spec_from_file_location("replay_representatives", ROOT / "scripts" / "replay_representatives.py")
replay = importlib.util.module_from_spec(spec)
spec.loader.exec_module(replay)


def test_eight_representatives_project_the_references_gpu_minutes_within_a_fifth_of_a_percent(capsys):
    folders = sorted((ROOT / "docs" / "diagnostics-h200" / "projection-gpu-time").glob("len*"))
    replay.main([str(f) for f in folders])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3  # 512, 2048 and 8192 tokens
    changes = [{int(n): float(pct) for n, pct in re.findall(r"(\d+): ([+-]\d+\.\d+)%", line.split("): ", 1)[1])}
               for line in lines]
    assert all(abs(c[8]) <= 0.2 and abs(c[12]) <= 0.35 for c in changes)
    assert max(abs(c[4]) for c in changes) > 1.0  # fewer shapes do not: the test can tell counts apart
