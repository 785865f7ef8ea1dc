"""The launcher's forkserver preload: it must be able to fork CUDA-clean case processes."""

import json
import subprocess
import sys


def test_the_forkserver_preload_imports_nothing_that_initializes_cuda():
    # bitsandbytes initializes CUDA when it is imported, and peft imports it wherever it is installed;
    # a forkserver holding either could only spawn cases (12 s each on the GPU machine), never fork them.
    code = ("import sys, sftbench.worker; "
            "print(sorted(m for m in ('peft', 'bitsandbytes', 'gptqmodel') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_cli_run_trains_rows_in_fresh_processes_and_keeps_every_result(tmp_path, capsys):
    from sftbench.__main__ import main

    row = "test_cpu_smoke[tiny-qwen-lora-sdpa]"
    assert main(["run", row, row, "--samples", "6", "--out", str(tmp_path)]) == 0
    written = sorted(path.name for path in tmp_path.iterdir())
    key = "tiny-qwen.lora.bf16.len512.bs1.gc.sdpa.r8-DEFAULT.n6.cpu"
    assert written == [f"{key}.quick.2.json", f"{key}.quick.json"]  # the same row twice: two results
    assert capsys.readouterr().out.count(f"{row} [{key}]: ") == 2
    result = json.loads((tmp_path / f"{key}.quick.json").read_text())
    assert result["model_shape"] == {"vocab_size": 1000, "hidden_size": 64, "num_layers": 2}  # tiny-qwen, for MFU
    overhead = result["overhead"]
    assert 0 < overhead["build_s"] + overhead["prepare_s"] <= overhead["setup_s"] <= overhead["case_s"] <= overhead["wall_s"]


def test_cli_run_names_an_unknown_row(capsys):
    from sftbench.__main__ import main

    assert main(["run", "test_quantization[qwen-99b]"]) == 2
    assert "no catalog row 'test_quantization[qwen-99b]'" in capsys.readouterr().err
