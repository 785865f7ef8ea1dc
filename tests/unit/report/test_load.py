"""sftbench.report.load: results and baselines folders, memory diagnostics."""

import json

from sftbench.report import load_diagnostics, load_results


def test_load_results_reads_baseline_files_and_plain_results(result_factory, tmp_path, lora):
    a, b = result_factory(lora(max_length=512)), result_factory(lora(max_length=1024))
    (tmp_path / "a.json").write_text(json.dumps({"key": a.key, "result": a.to_dict()}))
    (tmp_path / "b.json").write_text(b.to_json())
    assert load_results(tmp_path) == {a.key: a, b.key: b}


def test_load_diagnostics_reads_the_memory_diagnostics_only(lora, tmp_path):
    spec = lora(max_length=8192)
    (tmp_path / "diag.json").write_text(json.dumps({"key": spec.key, "memory_at_peak": {"batch_tokens": 8192}}))
    (tmp_path / "timing-only.json").write_text(json.dumps({"key": lora().key, "launch_floor_us": 8.8}))
    diagnostics = load_diagnostics(tmp_path)
    assert list(diagnostics) == [spec.key]
    assert diagnostics[spec.key] == {"batch_tokens": 8192}
