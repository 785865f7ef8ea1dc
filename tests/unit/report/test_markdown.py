"""sftbench.report.markdown: the whole report, as the report command writes it."""

import subprocess
import sys

from sftbench.report import mfu
from sftbench.storage.results import ResultStore


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
    assert memory and all("(python -m sftbench profile ROW --memory)" in cells[-1] for cells in memory)


def test_the_report_of_results_that_carry_their_shape_imports_no_torch(result_factory, lora, sections, tmp_path):
    result = result_factory(lora(), total_params=7_721_324_544,
                            model_shape={"vocab_size": 151_936, "hidden_size": 4_096, "num_layers": 32})
    (tmp_path / "results").mkdir()
    ResultStore(tmp_path / "results").write(result)
    code = ("import sys; from sftbench.__main__ import main; main(['report', sys.argv[1], '--out', sys.argv[2]]); "
            "print(sorted(m for m in ('torch', 'transformers', 'numpy', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "results" / "nvidia-h200"), str(tmp_path / "report.md")],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
    cells = sections((tmp_path / "report.md").read_text())["Model Type"][1][1]
    assert cells[0] == "qwen-7b-chat" and cells[10] == f"{mfu(result):.1%}" != ""
