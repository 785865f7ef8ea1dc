"""sftbench.report.tables: every seed table row for row, with the seed's numbers, ratios and outcomes."""

from sftbench.catalog import seed_tables
from sftbench.report import markdown
from sftbench.storage.results import scan_results


def test_every_seed_table_is_mirrored_row_for_row_with_the_seeds_numbers(sections):
    text = markdown({})
    tables = sections(text)
    assert sum(len(tables[t.title][1]) for t in seed_tables()) == 59
    for t in seed_tables():
        head, rows = tables[t.title]
        trainable = ["seed trainable", "trainable"] if t.name == "lora_rank_targets" else []
        assert head == [*t.columns, "seed min", "min", "ratio", "GPU min", "GPU busy", "seed MiB", "MiB", "ratio",
                        "tokens/s", "MFU", "attention", "mode", *trainable]
        assert len(rows) == len(t.rows)
        for cells, row in zip(rows, t.rows):
            assert cells[0] == row.spec.model_type
            seed_min = cells[len(t.columns)]
            assert seed_min == ("OOM" if row.seed_outcome == "oom" else f"{row.seed_minutes:.2f}")
            assert cells[len(t.columns) + 1] == "not run"
    assert "This run: 0 configurations, 0 of the 59 seed rows" in text
    assert text.count("None.") == 4  # no fidelity notes without results


def minutes_and_memory(cells: list[str]) -> list[str]:
    """seed min | min | ratio | seed MiB | MiB | ratio of a row of a table with two configuration columns."""
    return cells[2:5] + cells[7:10]


def gpu_time(cells: list[str]) -> list[str]:
    """GPU min | GPU busy of a row of a table with two configuration columns."""
    return cells[5:7]


def test_ratios_oom_and_not_run_cells(result_factory, lora, full, results_of, sections):
    results = results_of(
        result_factory(lora(max_length=4096), minutes=5.56, reserved=29264 * 1.5),
        result_factory(full(max_length=4096), outcome="oom", minutes=None, reserved=80000.0),
    )
    rows = {tuple(cells[:2]): cells for cells in sections(markdown(results))["Max Length (LoRA)"][1]}
    assert minutes_and_memory(rows["qwen-7b-chat", "4096"]) == ["11.12", "5.56", "0.50", "29264", "43896", "1.50"]
    assert rows["qwen-7b-chat", "8192"][3] == "not run"
    full_rows = {tuple(cells[:2]): cells for cells in sections(markdown(results))["Max Length (full fine-tuning)"][1]}
    assert minutes_and_memory(full_rows["qwen-7b-chat", "4096"]) == ["13.94", "OOM", "", "78986", "OOM", ""]
    assert minutes_and_memory(full_rows["qwen-7b-chat", "8192"]) == ["OOM", "not run", "", "OOM", "not run", ""]


def test_the_rank_table_shows_trainable_parameters_beside_the_seeds(h200_baselines):
    text = markdown(scan_results(h200_baselines)[0])
    rank_table = text.split("## LoRA Rank & LoRA Target Modules")[1].split("##")[0]
    assert "| seed trainable | trainable |" in rank_table
    assert "| 4.19M | 4.19M |" in rank_table  # r8 DEFAULT: the seed's 4.19M, measured 4,194,304


def test_gpu_minutes_and_busy_stand_beside_the_wall_minutes_and_are_empty_without_them(
        result_factory, lora, results_of, sections):
    results = results_of(
        result_factory(lora(max_length=1024), minutes=4.0, gpu_minutes_per_1000_samples=1.5, busy_pct=37.4,
                       clock="cupti-python 13.0.1"),
        result_factory(lora(max_length=2048), minutes=4.5, clock="unavailable: no CUPTI"),  # no GPU time
        result_factory(lora(max_length=4096), outcome="oom", minutes=None, gpu_minutes_per_1000_samples=2.0),
    )
    rows = {tuple(cells[:2]): cells for cells in sections(markdown(results))["Max Length (LoRA)"][1]}
    assert rows["qwen-7b-chat", "1024"][3:7] == ["4.00", "0.97", "1.50", "37%"]
    assert gpu_time(rows["qwen-7b-chat", "2048"]) == ["", ""]
    assert gpu_time(rows["qwen-7b-chat", "4096"]) == ["", ""]  # an OOM has no minutes of either clock
    assert gpu_time(rows["qwen-7b-chat", "8192"]) == ["", ""]  # not run


def test_another_gpus_results_stand_beside_each_row(result_factory, lora, results_of, sections):
    results = results_of(result_factory(lora(max_length=1024), gpu="NVIDIA H100 80GB HBM3", minutes=4.0))
    beside = results_of(
        result_factory(lora(max_length=1024), minutes=3.0, gpu_minutes_per_1000_samples=1.5, reserved=17080.0),
        result_factory(lora(max_length=2048), outcome="oom", minutes=None))
    header, rows = sections(markdown(results, beside=beside))["Max Length (LoRA)"]
    assert header[-3:] == ["NVIDIA H200 min", "NVIDIA H200 GPU min", "NVIDIA H200 MiB"]
    rows = {tuple(cells[:2]): cells for cells in rows}
    assert rows["qwen-7b-chat", "1024"][-3:] == ["3.00", "1.50", "17080"]
    assert rows["qwen-7b-chat", "2048"][-3:] == ["OOM", "", "OOM"]
    assert rows["qwen-7b-chat", "4096"][-3:] == ["not run", "", ""]
    assert "H200" not in sections(markdown(results))["Max Length (LoRA)"][0][-1]  # none without it
