"""scripts/judge_again.py on the committed H100 run of 2026-12-07T0849: what today's family thresholds make of it."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).parents[2]
spec = importlib.util.spec_from_file_location("judge_again", ROOT / "scripts" / "judge_again.py")
judge_again = importlib.util.module_from_spec(spec)
spec.loader.exec_module(judge_again)


def test_the_clean_rerun_passes_and_attention_3_is_flagged_in_every_flash_configuration(tmp_path, capsys, unpack):
    unpack(ROOT / "docs" / "runs-h100" / "2026-12-07T0849-results" / "results.tar.xz", tmp_path)
    baselines = tmp_path / "matrix"
    judge_again.main([f"{tmp_path / 's19clean1'}:{baselines}", f"{tmp_path / 's19attention3'}:{baselines}"])
    clean, attention = capsys.readouterr().out.split("== ")[1:]
    assert "0 of 19 rows failing" in clean and "wall minutes -24.3% to +11.9%, the host probe -40.0% to +32.1%" in clean
    assert "17 of 19 rows failing" in attention
    # The two that one step's spread as the error missed (measurements section 21):
    for key in ("qwen-7b-chat.full.bf16.len4096.bs1.gc.flash_attention_2 ",
                "qwen-7b-chat.lora.bf16.len2048.bs1.nogc.flash_attention_2.r8-DEFAULT "):
        [line] = [line for line in attention.splitlines() if key in line]
        assert line.startswith("regression") and "attention forward" in line.split("beyond: ")[1].split(";")[0]
    passing = [line.split()[1] for line in attention.splitlines() if line.startswith("pass")]
    assert passing == ["qwen-7b-chat.lora.bf16.len2048.bs1.gc.eager.r8-DEFAULT",
                       "qwen-7b-chat.lora.bf16.len2048.bs1.nogc.eager.r8-DEFAULT"]


def test_wall_minutes_are_summed_up_by_how_busy_the_gpu_was_in_the_baseline(tmp_path, capsys, unpack):
    unpack(ROOT / "docs" / "runs-h100" / "2026-12-07T0849-results" / "results.tar.xz", tmp_path)
    judge_again.main([f"{tmp_path / 's19clean1'}:{tmp_path / 'matrix'}"])
    assert capsys.readouterr().out.splitlines()[-1] == (
        "wall minutes by the baseline's GPU busy: 0-40%: 2 moved -24.3% to -0.4% (sd 12.0%); 40-60%: 1 moved +3.5% to "
        "+3.5% (sd 0.0%); 60-85%: 9 moved -10.5% to +11.9% (sd 6.6%); 85-100%: 7 moved -3.7% to +3.6% (sd 2.1%); all: "
        "19 moved -24.3% to +11.9% (sd 7.3%)")


def test_a_regression_of_wall_time_alone_is_marked_and_counted_apart(tmp_path, capsys, unpack):
    # Section 23's false alarm: LoRA r2 2048's wall time +58.1% with its GPU time flat, judged once from storage.
    unpack(ROOT / "docs" / "runs-h100" / "2026-12-07T1643-results" / "results.tar.xz", tmp_path)
    judge_again.main([f"{tmp_path / 's19clean2'}:{tmp_path / 's19update'}"])
    lines = capsys.readouterr().out.splitlines()
    [failing] = [line for line in lines if line.startswith("regression")]
    assert "r2-DEFAULT " in failing and failing.endswith("[wall time alone: a live run measures it once more]")
    assert not any("wall time alone" in line for line in lines if line.startswith("pass"))
    assert "1 of 19 rows failing (1 in wall time alone);" in lines[-2]
