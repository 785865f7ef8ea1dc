"""sftbench.report.plots: PNG plots of the sweeps, written beside the Markdown and linked."""

from sftbench.report import markdown

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_plots_are_written_beside_the_markdown_and_linked(result_factory, tmp_path, lora, full, results_of):
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


def test_a_table_without_results_gets_no_plot(result_factory, tmp_path, lora, results_of):
    text = markdown(results_of(result_factory(lora(max_length=512))), tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["lora_max_length.png"]
    assert text.count("![") == 1


def test_gpu_minutes_get_their_own_line_only_where_results_have_them(result_factory, lora, results_of):
    from matplotlib.figure import Figure

    from sftbench.catalog import seed_tables
    from sftbench.report import plots

    lengths = [result_factory(lora(max_length=n), minutes=n / 500) for n in (512, 2048)]
    traced = [result_factory(lora("qwen-1_8b-chat", max_length=n), minutes=n / 500,
                             gpu_minutes_per_1000_samples=n / 1000, busy_pct=50.0) for n in (512, 2048)]
    [t] = [t for t in seed_tables() if t.name == "lora_max_length"]
    for results, gpu_lines in ((results_of(*lengths), []), (results_of(*lengths, *traced), [[0.512, 2.048]])):
        memory, minutes = Figure().subplots(1, 2)
        plots._lines(t, results, memory, minutes)
        drawn = [list(line.get_ydata()) for line in minutes.get_lines() if line.get_linestyle() == ":"]
        assert drawn == gpu_lines
        assert (minutes.get_legend() is not None) == bool(gpu_lines)


def test_gpu_minutes_are_marked_on_the_bars_of_this_run(result_factory, tmp_path, lora, results_of):
    traced = result_factory(lora(lora_rank=2), minutes=4.0, gpu_minutes_per_1000_samples=2.5, busy_pct=62.5)
    markdown(results_of(traced), tmp_path)
    assert (tmp_path / "lora_rank_targets.png").read_bytes().startswith(PNG_SIGNATURE)


def test_where_the_gpu_time_goes_is_drawn_per_table_for_rows_with_kernel_families(result_factory, kernels_factory,
                                                                                    tmp_path, lora, results_of):
    from sftbench.catalog import table
    from sftbench.report.plots import family_plot

    traced = result_factory(lora(max_length=2048), kernels=kernels_factory(
        ["flash_fwd_kernel<1>", "nvjet_a"], [(2048, 1000.0, [[0, 64, 4_000_000], [1, 300, 20_000_000]])]))
    lines = family_plot(table("lora_max_length"), results_of(traced, result_factory(lora(max_length=512))), tmp_path)
    assert lines == ["![Max Length (LoRA): GPU time by kernel family](" + f"{tmp_path.name}/lora_max_length-families.png)", ""]
    assert (tmp_path / "lora_max_length-families.png").read_bytes().startswith(PNG_SIGNATURE)
    assert family_plot(table("lora_max_length"), results_of(result_factory(lora(max_length=512))), tmp_path) == []


def test_where_the_memory_goes_at_the_peak_is_drawn_per_table_for_rows_with_categories(result_factory, tmp_path, lora,
                                                                                         results_of):
    from sftbench.catalog import table
    from sftbench.report.plots import memory_plot
    from sftbench.result import MemoryCategories

    sorted_out = result_factory(lora(max_length=2048))
    sorted_out.memory.categories = MemoryCategories(18372.0, 15.0, 14700.0, 15.0, 60.0, 3582.0, 894.0)
    lines = memory_plot(table("lora_max_length"), results_of(sorted_out, result_factory(lora(max_length=512))), tmp_path)
    assert lines == [f"![Max Length (LoRA): memory at the peak by category]({tmp_path.name}/lora_max_length-memory.png)",
                     ""]
    assert (tmp_path / "lora_max_length-memory.png").read_bytes().startswith(PNG_SIGNATURE)
    assert memory_plot(table("lora_max_length"), results_of(result_factory(lora(max_length=512))), tmp_path) == []
