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
