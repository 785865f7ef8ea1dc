"""sftbench.report: every seed table row for row, ratios, MFU, plots and fidelity notes."""

import json
from pathlib import Path

import pytest

from sftbench.catalog import seed_tables
from sftbench.report import load_diagnostics, load_results, markdown, mfu, model_flops_per_token, peak_bf16_flops
from sftbench.spec import CaseSpec

BASELINES = Path(__file__).parents[2] / "baselines" / "nvidia-h200"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def lora(model_type="qwen-7b-chat", **changes) -> CaseSpec:
    return CaseSpec(model_type, **changes)


def full(model_type="qwen-7b-chat", **changes) -> CaseSpec:
    return CaseSpec(model_type, sft_type="full", **changes)


def sections(text: str) -> dict[str, tuple[list[str], list[list[str]]]]:
    """{section title: (header cells, [row cells])} of every Markdown table under a ## or ### heading."""
    found, title = {}, None
    for line in text.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip()
        elif line.startswith("|") and not line.startswith("|---"):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            if title in found:
                found[title][1].append(cells)
            else:
                found[title] = (cells, [])
    return found


def results_of(*results) -> dict:
    return {r.key: r for r in results}


def test_every_seed_table_is_mirrored_row_for_row_with_the_seeds_numbers():
    text = markdown({})
    tables = sections(text)
    assert sum(len(tables[t.title][1]) for t in seed_tables()) == 59
    for t in seed_tables():
        head, rows = tables[t.title]
        trainable = ["seed trainable", "trainable"] if t.name == "lora_rank_targets" else []
        assert head == [*t.columns, "seed min", "min", "ratio", "seed MiB", "MiB", "ratio", "tokens/s", "MFU",
                        "attention", "mode", *trainable]
        assert len(rows) == len(t.rows)
        for cells, row in zip(rows, t.rows):
            assert cells[0] == row.spec.model_type
            seed_min = cells[len(t.columns)]
            assert seed_min == ("OOM" if row.seed_outcome == "oom" else f"{row.seed_minutes:.2f}")
            assert cells[len(t.columns) + 1] == "not run"
    assert "This run: 0 configurations, 0 of the 59 seed rows" in text
    assert text.count("None.") == 3  # no fidelity notes without results


def test_ratios_oom_and_not_run_cells(result_factory):
    results = results_of(
        result_factory(lora(max_length=4096), minutes=5.56, reserved=29264 * 1.5),
        result_factory(full(max_length=4096), outcome="oom", minutes=None, reserved=80000.0),
    )
    rows = {tuple(cells[:2]): cells for cells in sections(markdown(results))["Max Length (LoRA)"][1]}
    assert rows["qwen-7b-chat", "4096"][2:8] == ["11.12", "5.56", "0.50", "29264", "43896", "1.50"]
    assert rows["qwen-7b-chat", "8192"][3] == "not run"
    full_rows = {tuple(cells[:2]): cells for cells in sections(markdown(results))["Max Length (full fine-tuning)"][1]}
    assert full_rows["qwen-7b-chat", "4096"][2:8] == ["13.94", "OOM", "", "78986", "OOM", ""]
    assert full_rows["qwen-7b-chat", "8192"][2:8] == ["OOM", "not run", "", "OOM", "not run", ""]


def test_mfu_follows_the_stated_formula(result_factory):
    # qwen-7b-chat: 7,721,324,544 parameters, embedding 151,936 x 4,096, 32 layers; mean length 2048.
    matmul = 7_721_324_544 - 151_936 * 4_096
    attention = 6 * 32 * 4_096 * 2_048
    made = dict(total_params=7_721_324_544, epoch_tokens=2_048_000, tokens_per_s=10_000.0)
    lora_result = result_factory(lora(), **made)
    full_result = result_factory(full(), **made)
    assert model_flops_per_token(lora_result) == 4 * matmul + attention == 30_006_591_488
    assert model_flops_per_token(full_result) == 6 * matmul + attention == 44_204_580_864
    assert mfu(lora_result) == pytest.approx(10_000 * 30_006_591_488 / 989e12)  # 30.3%
    assert mfu(result_factory(lora(), gpu="NVIDIA A100-SXM4-80GB", **made)) == pytest.approx(0.9618, abs=1e-4)
    assert mfu(result_factory(lora(), gpu="NVIDIA L4", **made)) is None
    assert mfu(result_factory(lora(), **{**made, "total_params": None})) is None
    cells = sections(markdown(results_of(lora_result)))["Model Type"][1][1]
    assert cells[0] == "qwen-7b-chat" and cells[8] == "30.3%"


@pytest.mark.parametrize("gpu, peak", [
    ("NVIDIA H200", 989e12), ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 SXM5 80GB", 989e12),
    ("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA A100 80GB PCIe", 312e12),
    ("NVIDIA H100 PCIe", None), ("NVIDIA H200 NVL", None), ("cpu", None), (None, None),
])
def test_peak_flops_by_gpu_name(gpu, peak):
    assert peak_bf16_flops(gpu) == peak


def test_plots_are_written_beside_the_markdown_and_linked(result_factory, tmp_path):
    results = results_of(
        *(result_factory(lora(max_length=n), minutes=n / 500, reserved=15000.0 + n) for n in (512, 2048, 8192)),
        result_factory(lora(batch_size=2), reserved=25000.0),
        result_factory(lora(lora_rank=2), reserved=19000.0),
        result_factory(full(max_length=8192), reserved=88080.0),
        result_factory(lora("qwen-1_8b-chat", max_length=8192), outcome="oom", minutes=None),
    )
    text = markdown(results, tmp_path / "results-x")
    names = {"lora_max_length", "full_max_length", "batch_size", "lora_rank_targets"}
    assert {p.stem for p in (tmp_path / "results-x").iterdir()} == names
    for name in names:
        png = (tmp_path / "results-x" / f"{name}.png").read_bytes()
        assert png.startswith(PNG_SIGNATURE) and len(png) > 10_000
        assert f"](results-x/{name}.png)" in text


def test_a_table_without_results_gets_no_plot(result_factory, tmp_path):
    text = markdown(results_of(result_factory(lora(max_length=512))), tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["lora_max_length.png"]
    assert text.count("![") == 1


def test_fidelity_notes_list_memory_beyond_10_percent_outcomes_and_reversed_trends(result_factory):
    results = results_of(
        result_factory(lora(max_length=1024), minutes=5.0, reserved=17096 * 1.05),  # within 10%: no note
        result_factory(lora(max_length=2048), minutes=4.0, reserved=19362 * 1.2),  # in six tables: one note
        result_factory(lora(max_length=4096), minutes=10.0, reserved=29264 * 0.8),
        result_factory(lora(quantization="int4-bnb"), reserved=13616 * 2),  # not bf16: no note
        result_factory(full(max_length=8192), reserved=88080.0),
    )
    notes = sections(markdown(results))
    memory = notes["Memory more than 10% off the seed (bf16 rows)"][1]
    assert [cells[1:] for cells in memory] == [["19362", "23234", "1.20", "not yet measured"],
                                              ["29264", "23411", "0.80", "not yet measured"]]
    assert memory[0][0].count("`test_") == 6 and "`test_lora_max_length[qwen-7b-chat-2048]`" in memory[0][0]
    assert memory[1][0] == "`test_lora_max_length[qwen-7b-chat-4096]`"
    assert notes["Outcome differs from the seed"][1] == [
        ["`test_full_max_length[qwen-7b-chat-8192]`", "OOM", "OK, 88080 MiB",
         "needs more than the seed's 80 GB (81920 MiB); this GPU has 143771 MiB"]]
    assert notes["Within-table trend goes the other way"][1] == [
        ["Max Length (LoRA)", "qwen-7b-chat-1024 → qwen-7b-chat-2048", "min", "4.11 → 7.01 (+71%)",
         "5.00 → 4.00 (-20%)", "not yet measured"]]


def test_a_reversed_time_trend_of_cpu_bound_steps_says_so_and_a_flat_one_is_no_trend(result_factory):
    results = results_of(
        # 512 -> 1024 tokens per step at the same step time: the minutes cannot follow the seed's +63%.
        result_factory(lora(max_length=512), minutes=4.03, step_durations_s=[0.24] * 3, step_tokens=[512] * 3),
        result_factory(lora(max_length=1024), minutes=4.01, step_durations_s=[0.25] * 3, step_tokens=[1024] * 3),
        # 73836 -> 73834 MiB against the seed's +0.55%: under 1% in both, not a trend.
        result_factory(full(max_length=512), reserved=73836.0),
        result_factory(full(max_length=1024), reserved=73834.0),
    )
    trends = sections(markdown(results))["Within-table trend goes the other way"][1]
    assert [cells[1:3] + cells[5:] for cells in trends] == [
        ["qwen-7b-chat-512 → qwen-7b-chat-1024", "min",
         "host-bound steps here: the median timed step takes 0.24 s at 512 tokens and 0.25 s at 1024"]]


@pytest.mark.parametrize("bs1_steps, bs2_steps, minutes, cause", [
    # bs2 steps hold twice the tokens and take 1.5x as long: the epoch gets faster, the seed's got slower.
    (([0.28] * 3, [1800] * 3), ([0.42] * 3, [3600] * 3), (4.52, 3.54),
     "host-bound steps here: the median timed step takes 0.28 s at 1800 tokens and 0.42 s at 3600"),
    # bs1's 107-token step costs 0.25 s, its 2048-token one 0.30 s: bs2 pays that floor once per two samples.
    (([0.30, 0.26, 0.25], [2048, 2048, 107]), ([0.46] * 3, [4096] * 3), (4.49, 3.45),
     "a per-step host cost: in qwen-7b-chat-bs1 the shortest timed step (107 tokens) takes 0.25 s, "
     "the longest (2048 tokens) 0.30 s"),
])
def test_a_host_bound_batch_size_trend_says_why(result_factory, bs1_steps, bs2_steps, minutes, cause):
    results = results_of(
        result_factory(lora(), minutes=minutes[0], step_durations_s=bs1_steps[0], step_tokens=bs1_steps[1]),
        result_factory(lora(batch_size=2), minutes=minutes[1], step_durations_s=bs2_steps[0],
                       step_tokens=bs2_steps[1]),
    )
    trends = sections(markdown(results))["Within-table trend goes the other way"][1]
    assert [cells[1:3] + cells[5:] for cells in trends] == [["qwen-7b-chat-bs1 → qwen-7b-chat-bs2", "min", cause]]


def test_memory_diagnostics_give_the_memory_notes_their_cause(result_factory, tmp_path):
    spec = lora(max_length=8192)
    peak = {"batch_tokens": 8192, "allocated_before_mib": 14859,
            "groups_mib": [["`shift_logits = logits[..., :-1, :].contiguous()` (qwen.py:182)", 7121, 4],
                           ["in the backward pass", 4747, 2], ["`return hidden_states` (qwen.py:140)", 1984, 31],
                           ["`x` (qwen.py:59)", 128, 1]]}
    (tmp_path / "diag.json").write_text(json.dumps({"key": spec.key, "memory_at_peak": peak}))
    (tmp_path / "timing-only.json").write_text(json.dumps({"key": lora().key, "launch_floor_us": 8.8}))
    diagnostics = load_diagnostics(tmp_path)
    assert list(diagnostics) == [spec.key]
    memory = sections(markdown(results_of(result_factory(spec, reserved=32438.0)), diagnostics=diagnostics))
    [[_, _, _, _, cause]] = memory["Memory more than 10% off the seed (bf16 rows)"][1]
    assert cause == ("at the peak of its longest micro-step (8192 tokens), above the 14859 MiB held before it: "
                     "7121 MiB `shift_logits = logits[..., :-1, :].contiguous()` (qwen.py:182), 4747 MiB in the "
                     "backward pass, 1984 MiB `return hidden_states` (qwen.py:140) (scripts/step_profile.py --memory)")


def test_load_results_reads_baseline_files_and_plain_results(result_factory, tmp_path):
    a, b = result_factory(lora(max_length=512)), result_factory(lora(max_length=1024))
    (tmp_path / "a.json").write_text(json.dumps({"key": a.key, "result": a.to_dict()}))
    (tmp_path / "b.json").write_text(b.to_json())
    assert load_results(tmp_path) == {a.key: a, b.key: b}


def test_the_committed_h200_baselines_give_plausible_mfu():
    results = load_results(BASELINES)
    assert results and all(0.01 < mfu(r) < 0.6 for r in results.values() if r.outcome == "ok")


def test_the_rank_table_shows_trainable_parameters_beside_the_seeds():
    text = markdown(load_results(Path(__file__).parents[2] / "baselines" / "nvidia-h200"))
    rank_table = text.split("## LoRA Rank & LoRA Target Modules")[1].split("##")[0]
    assert "| seed trainable | trainable |" in rank_table
    assert "| 4.19M | 4.19M |" in rank_table  # r8 DEFAULT: the seed's 4.19M, measured 4,194,304


def test_the_committed_h200_report_is_what_the_report_command_writes(tmp_path):
    """docs/results-h200.md, but for its hand-written preamble (the > lines), is the command's output from
    the committed baselines and diagnostics: every flagged memory row has its measured cause."""
    from sftbench.__main__ import main

    docs = BASELINES.parents[1] / "docs"
    out = tmp_path / "results-h200.md"
    assert main(["report", str(BASELINES), "--out", str(out), "--plots", str(tmp_path / "results-h200"),
                 "--diagnostics", str(docs / "diagnostics-h200")]) == 0
    def text(path):
        return [line for line in path.read_text().splitlines() if line and not line.startswith(">")]

    assert text(docs / "results-h200.md") == text(out)
    memory = sections(out.read_text())["Memory more than 10% off the seed (bf16 rows)"][1]
    assert memory and all("(scripts/step_profile.py --memory)" in cells[-1] for cells in memory)
