"""sftbench.report.markdown: the whole report, as the report command writes it."""


def test_the_committed_h200_report_is_what_the_report_command_writes(tmp_path, sections, h200_baselines):
    """docs/results-h200.md, but for its hand-written preamble (the > lines), is the command's output from
    the committed baselines and diagnostics: every flagged memory row has its measured cause."""
    from sftbench.__main__ import main

    docs = h200_baselines.parents[1] / "docs"
    out = tmp_path / "results-h200.md"
    assert main(["report", str(h200_baselines), "--out", str(out), "--plots", str(tmp_path / "results-h200"),
                 "--diagnostics", str(docs / "diagnostics-h200")]) == 0
    def text(path):
        return [line for line in path.read_text().splitlines() if line and not line.startswith(">")]

    assert text(docs / "results-h200.md") == text(out)
    memory = sections(out.read_text())["Memory more than 10% off the seed (bf16 rows)"][1]
    assert memory and all("(scripts/step_profile.py --memory)" in cells[-1] for cells in memory)
