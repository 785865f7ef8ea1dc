"""python -m sftbench: each command's output and exit code, and one clear line for bad input."""

import json

import pytest

from sftbench.__main__ import main
from sftbench.baselines import BaselineStore
from sftbench.catalog import rows_of
from sftbench.spec import CaseSpec

SPEC = CaseSpec("qwen-7b-chat", max_length=4096)


@pytest.fixture
def store(tmp_path):
    return BaselineStore(tmp_path / "baselines")


@pytest.fixture
def written(store, result_factory):
    """A baseline of SPEC measured on an H200, written to the store."""
    return store.write(result_factory(SPEC), rows_of(SPEC), {"commit": "abc1234", "mode": "quick"})


# --- run --------------------------------------------------------------------------------------------------------


def test_cli_run_trains_rows_in_fresh_processes_and_keeps_every_result(tmp_path, capsys):
    row = "test_cpu_smoke[tiny-qwen-lora-sdpa]"
    assert main(["run", row, row, "--samples", "6", "--out", str(tmp_path)]) == 0
    written = sorted(path.relative_to(tmp_path).as_posix() for path in tmp_path.rglob("*.json"))
    key = "tiny-qwen.lora.bf16.len512.bs1.gc.sdpa.r8-DEFAULT.n6.cpu"
    assert written == [f"cpu/{key}.2.json", f"cpu/{key}.json"]  # the same row twice: two results
    assert capsys.readouterr().out.count(f"{row} [{key}]: ") == 2
    result = json.loads((tmp_path / "cpu" / f"{key}.json").read_text())
    assert result["model_shape"] == {"vocab_size": 1000, "hidden_size": 64, "num_layers": 2}  # tiny-qwen, for MFU
    overhead = result["overhead"]
    assert 0 < overhead["build_s"] + overhead["prepare_s"] <= overhead["setup_s"] <= overhead["case_s"] <= overhead["wall_s"]


def test_cli_run_names_an_unknown_row(capsys):
    assert main(["run", "test_quantization[qwen-99b]"]) == 2
    assert "no catalog row 'test_quantization[qwen-99b]'" in capsys.readouterr().err


# --- baselines ----------------------------------------------------------------------------------------------------


# --- python -m sftbench baselines ------------------------------------------------------------------------------


def test_cli_lists_baselines_as_json(store, written, capsys):
    assert main(["baselines", "--json", "--dir", str(store.root)]) == 0
    entries = json.loads(capsys.readouterr().out)
    assert len(entries) == 1
    assert {"case_id", "tables", "gpu", "outcome", "max_reserved_mib", "max_allocated_mib",
            "minutes_per_1000_samples", "tokens_per_s", "attention", "quantization", "trainable_params",
            "versions"} <= set(entries[0])
    assert entries[0]["case_id"] == "qwen-7b-chat-4096"
    assert entries[0]["commit"] == "abc1234"


def test_cli_lists_baselines_for_people(store, written, capsys):
    assert main(["baselines", "--dir", str(store.root)]) == 0
    out = capsys.readouterr().out
    assert "test_lora_max_length[qwen-7b-chat-4096]" in out and "10.00 min" in out and "1000 MiB" in out


def test_cli_exits_2_on_a_corrupt_baseline(store, written, capsys):
    written.write_text("not json", encoding="utf-8")
    assert main(["baselines", "--json", "--dir", str(store.root)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("sftbench: baseline ") and "is corrupt" in captured.err
