"""sftbench.report.load: results and baselines folders."""

import json

from sftbench.report import load_results


def test_load_results_reads_baseline_files_and_plain_results(result_factory, tmp_path, lora):
    a, b = result_factory(lora(max_length=512)), result_factory(lora(max_length=1024))
    (tmp_path / "a.json").write_text(json.dumps({"key": a.key, "result": a.to_dict()}))
    (tmp_path / "b.json").write_text(b.to_json())
    assert load_results(tmp_path) == {a.key: a, b.key: b}
