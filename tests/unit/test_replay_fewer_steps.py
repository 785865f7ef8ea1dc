"""scripts/replay_fewer_steps.py on the committed H100 self-test: what the guide says a cheaper quick mode keeps."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).parents[2]
spec = importlib.util.spec_from_file_location("replay_fewer_steps", ROOT / "scripts" / "replay_fewer_steps.py")
replay = importlib.util.module_from_spec(spec)
spec.loader.exec_module(replay)


def test_with_two_repeats_the_injected_families_are_flagged_and_the_clean_reruns_are_not(capsys):
    replay.main([str(ROOT / "docs" / "runs-h100" / "2026-12-06T1907-results")])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 * 8  # clean1, clean2, attention3, gemm3 against update/, 8 configurations each
    by_stage: dict[str, set[str]] = {}
    for line in lines:
        by_stage.setdefault(line.split()[0], set()).add(line.split("2 repeat(s): ")[1].split(" (")[0])
    assert by_stage == {"attention3": {"attention backward, attention forward"}, "gemm3": {"GEMM"},
                        "clean1": {"none"}, "clean2": {"none"}}
    halves = [float(line.split("half the timed steps ")[1].split("%")[0]) for line in lines]
    assert max(map(abs, halves)) < 4.0
