"""python -m sftbench: each command's output and exit code, and one clear line for bad input."""

import json
import os
import re
import subprocess
import sys

import pytest

from sftbench import environment
from sftbench.__main__ import main
from sftbench.catalog import rows_of
from sftbench.result import MemoryCategories
from sftbench.spec import CaseSpec
from sftbench.storage import schema

from .conftest import traced

SPEC = CaseSpec("qwen-7b-chat", max_length=4096)
ROW = "test_lora_max_length[qwen-7b-chat-4096]"  # SPEC's
# A traced step's kernels: two thirds GEMM, a third attention backward.
TRACED = {"kernels": traced(["nvjet_a", "flash_bwd_kernel<1>"], [(8192, 1.0, [[0, 10, 4_000_000], [1, 5, 2_000_000]])])}


# --- run --------------------------------------------------------------------------------------------------------


def test_cli_run_trains_rows_in_fresh_processes_and_keeps_every_result(tmp_path, capsys):
    row = "test_cpu_smoke[tiny-qwen-lora-sdpa]"
    assert main(["run", row, row, "--samples", "6", "--out", str(tmp_path)]) == 0
    written = sorted(path.relative_to(tmp_path).as_posix() for path in tmp_path.rglob("*.json"))
    key = "tiny-qwen.lora.bf16.len512.bs1.gc.sdpa.r8-DEFAULT.n6.cpu"
    assert written == [f"cpu/{key}.2.json", f"cpu/{key}.json"]  # the same row twice: two results
    assert capsys.readouterr().out.count(f"{row} [{key}]: ") == 2
    result = json.loads((tmp_path / "cpu" / f"{key}.json").read_text())["result"]
    assert result["model_shape"] == {"vocab_size": 1000, "hidden_size": 64, "num_layers": 2}  # tiny-qwen, for MFU
    overhead = result["overhead"]
    assert 0 < overhead["build_s"] + overhead["prepare_s"] <= overhead["setup_s"] <= overhead["case_s"] <= overhead["wall_s"]


def test_cli_run_names_an_unknown_row(capsys):
    assert main(["run", "test_quantization[qwen-99b]"]) == 2
    assert "no catalog row 'test_quantization[qwen-99b]'" in capsys.readouterr().err


# --- run, profile, projection, attention: refused before anything trains -----------------------------------------


@pytest.mark.parametrize("command", ["run", "profile", "projection"])
def test_an_out_that_is_a_file_is_one_line_before_anything_trains(tmp_path, capsys, command):
    (tmp_path / "a-file").write_text("")
    assert main([command, "test_cpu_smoke[tiny-qwen-lora-sdpa]", "--out", str(tmp_path / "a-file")]) == 2
    assert capsys.readouterr().err == (f"sftbench: --out {tmp_path}/a-file is not a writable folder (File exists): "
                                       "nothing was trained\n")


def test_projection_without_a_cuda_gpu_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(environment, "gpu_info", lambda: {"gpu": "cpu"})
    rows = ["test_lora_max_length[qwen-7b-chat-512]", "test_lora_max_length[qwen-7b-chat-1024]"]
    assert main(["projection", *rows, "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (f"sftbench: cannot run {', '.join(rows)}: no CUDA GPU here: GPU rows need "
                                       "one (the CPU smoke cases run without)\n")


@pytest.mark.parametrize("command, refusal", [
    ("run", f"cannot run {ROW}: {environment.FLASH_EXTRA}, or run with --attn-fallback sdpa"),
    ("profile", f"cannot run {ROW}: {environment.FLASH_EXTRA}"),  # no option picks another kernel
    ("attention", f"attention: {environment.FLASH_EXTRA}"),
], ids=["run", "profile", "attention"])
def test_without_flash_attn_a_flash_row_is_refused_naming_the_flash_extra(tmp_path, monkeypatch, result_factory,
                                                                          capsys, command, refusal):
    monkeypatch.setattr(environment, "gpu_info", lambda: {"gpu": "NVIDIA H200"})
    monkeypatch.setattr(environment, "flash_attn_installed", lambda: False)
    (tmp_path / "result.json").write_text(schema.dumps("result", result=result_factory(SPEC, **TRACED)))
    arguments = {"run": [ROW], "profile": [ROW, "--out", str(tmp_path / "profile")],
                 "attention": [str(tmp_path / "result.json"), "--out", str(tmp_path / "a.json")]}
    assert main([command, *arguments[command]]) == 2
    assert capsys.readouterr().err == f"sftbench: {refusal}\n"


# --- baselines ----------------------------------------------------------------------------------------------------


# --- python -m sftbench baselines ------------------------------------------------------------------------------


def test_cli_lists_baselines_as_json(store, written, capsys):
    assert main(["baselines", "--json", "--dir", str(store.root)]) == 0
    entries = json.loads(capsys.readouterr().out)
    assert len(entries) == 1
    assert {"case_id", "tables", "gpu", "outcome", "max_reserved_mib", "max_allocated_mib",
            "minutes_per_1000_samples", "tokens_per_s", "attention", "quantization", "trainable_params",
            "versions", "gpu_minutes_per_1000_samples", "gpu_busy_pct", "gpu_minutes_by_family", "largest_family",
            "largest_memory_category", "host", "gpu_uuid"} <= set(entries[0])
    assert entries[0]["case_id"] == "qwen-7b-chat-4096"
    assert entries[0]["commit"] == "abc1234"


def test_cli_lists_baselines_for_people_in_aligned_columns_under_a_header(store, written, result_factory,
                                                                          kernels_factory, capsys):
    spec = CaseSpec("qwen-7b-chat", max_length=8192)  # a longer row name, with GPU time and families
    record = kernels_factory(["nvjet_a", "flash_bwd_kernel<1>"], [(8192, 1.0, [[0, 10, 4_000_000], [1, 5, 2_000_000]])],
                             gpu_minutes_per_1000_samples=6.1234, busy_pct=82.4)
    result = result_factory(spec, kernels=record)
    result.memory.categories = MemoryCategories(1000.0, 10.0, 700.0, 10.0, 20.0, 260.0, 100.0)
    store.write(result, rows_of(spec), {"commit": "abc1234", "mode": "quick"})
    assert main(["baselines", "--dir", str(store.root)]) == 0
    header, rule, *lines = capsys.readouterr().out.splitlines()
    titles = ("GPU", "row", "outcome", "GPU-min", "busy %", "wall min", "max reserved MiB", "host",
              "largest kernel family", "largest at the memory peak")
    assert [header.index(title) for title in titles] == sorted(header.index(title) for title in titles)
    assert set(rule) == {"-", " "} and len(lines) == 2
    row_8192 = next(line for line in lines if "qwen-7b-chat-8192]" in line)
    assert "6.123" in row_8192 and " 82 " in row_8192 and row_8192.endswith("frozen parameters 70%")
    assert row_8192[header.index("largest kernel family"):].startswith("GEMM 67% ")
    for line in lines:  # numbers end under their title, text starts under it
        assert line[:header.index("max reserved MiB") + len("max reserved MiB")].endswith("1000")
        assert line[:header.index("wall min") + len("wall min")].endswith("10.00")
        assert line[header.index("host"):].startswith("GPU-host-a-0 +1")


def test_cli_exits_2_on_a_corrupt_baseline(store, written, capsys):
    written.write_text("not json", encoding="utf-8")
    assert main(["baselines", "--json", "--dir", str(store.root)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("sftbench: baseline ") and "cannot be read" in captured.err


def test_cli_lists_the_good_baselines_and_names_a_bad_one(store, written, result_factory, capsys):
    bad = store.write(result_factory(CaseSpec("qwen-7b-chat", max_length=2048)), rows_of(SPEC), {})
    bad.write_text('{"schema": 1')
    assert main(["baselines", "--dir", str(store.root)]) == 2
    captured = capsys.readouterr()
    assert "test_lora_max_length[qwen-7b-chat-4096]" in captured.out
    assert captured.err.startswith(f"sftbench: baseline {bad} cannot be read") and captured.err.count("\n") == 1


def test_cli_baselines_resolve_against_the_repository_root(store, written, tmp_path, monkeypatch, capsys):
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "docs").mkdir()
    monkeypatch.chdir(tmp_path / "docs")
    assert main(["baselines"]) == 0
    assert "test_lora_max_length[qwen-7b-chat-4096]" in capsys.readouterr().out
    monkeypatch.chdir(tmp_path / "baselines" / "nvidia-h200")  # no pyproject.toml above it but tmp_path's
    (tmp_path / "pyproject.toml").unlink()
    assert main(["baselines"]) == 2
    assert capsys.readouterr().err == (f"sftbench: no baselines folder {tmp_path}/baselines/nvidia-h200/baselines "
                                       "(give --dir, or run from the repository)\n")


@pytest.mark.parametrize("command", [["baselines", "--dir", "{baselines}"], ["kernels", "{gpu_folder}"]])
def test_a_broken_kernel_families_file_is_one_line_naming_the_rule(store, result_factory, rules_file, capsys, command):
    written = store.write(result_factory(SPEC, **TRACED), rows_of(SPEC), {})
    rules_file.write_text('families = ["other"]\n[[rule]]\nfamily = "other"\npattern = "gemm("\n')
    assert main([word.format(baselines=store.root, gpu_folder=written.parent) for word in command]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (f"sftbench: {rules_file}: rule 1 (pattern 'gemm(') is not a regular expression "
                            "(missing ), unterminated subpattern at position 4)\n")


@pytest.mark.parametrize("option", ["--dir", "--baselines"])
def test_a_folder_without_baselines_is_one_line(store, written, tmp_path, capsys, option):
    command = ["baselines"] if option == "--dir" else ["upgrade", "--run", f"candidate={written.parent}"]
    (tmp_path / "empty").mkdir()
    problems = {tmp_path / "empty": f"no baselines in {tmp_path / 'empty'} (they are in a folder per GPU below it)",
                written.parent: f"no baselines in {written.parent}: it is one GPU's folder; {option} takes the folder "
                                f"above it, {store.root}",
                tmp_path / "missing": f"no baselines folder {tmp_path / 'missing'}"}
    for folder, problem in problems.items():
        assert main([*command, option, str(folder)]) == 2
        assert capsys.readouterr() == ("", f"sftbench: {problem}\n")


# --- report -------------------------------------------------------------------------------------------------------



def test_cli_report_skips_files_that_are_not_results_naming_each(store, written, capsys, tmp_path):
    folder = written.parent
    (folder / "notes.json").write_text('{"notes": "H200 run"}')
    (folder / "truncated.json").write_text('{"case": {')
    assert main(["report", str(folder), "--out", str(tmp_path / "new" / "report.md")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [(f"sftbench: skipped {folder}/notes.json is not an sftbench file (it names no schema, and is no "
                    "result of schema 1)"),
                   (f"sftbench: skipped {folder}/truncated.json cannot be read (JSONDecodeError: Expecting "
                    "property name enclosed in double quotes: line 1 column 11 (char 10))")]
    assert "qwen-7b-chat" in (tmp_path / "new" / "report.md").read_text()  # the good result, in a created folder


def test_cli_report_on_a_folder_without_results_is_an_error(store, written, tmp_path, capsys):
    assert main(["report", str(store.root)]) == 2
    assert capsys.readouterr().err == (f"sftbench: no results in {store.root} (results/<gpu>/ or baselines/<gpu>/); "
                                       f"the folders below it that hold results: {written.parent}\n")
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert capsys.readouterr().err == f"sftbench: no results in {tmp_path / 'empty'} (results/<gpu>/ or baselines/<gpu>/)\n"


def test_cli_report_beside_a_folder_without_results_is_one_line(written, tmp_path, capsys):
    assert main(["report", str(written.parent), "--beside", str(tmp_path / "none")]) == 2
    assert capsys.readouterr().err == (f"sftbench: --beside {tmp_path / 'none'}: no results there (results/<gpu>/ or "
                                       "baselines/<gpu>/)\n")


def test_cli_report_out_that_cannot_be_written_is_one_line(store, written, tmp_path, capsys, monkeypatch):
    from sftbench.storage import files

    monkeypatch.setattr(files, "RESCUE_DIR", tmp_path / "rescued")
    (tmp_path / "a-file").write_text("")
    out = tmp_path / "a-file" / "report.md"
    assert main(["report", str(written.parent), "--out", str(out)]) == 2
    assert capsys.readouterr().err == (f"sftbench: could not write {out} (File exists); "
                                       f"it is in {files.rescue_path(out)} instead\n")
    assert files.rescue_path(out).is_relative_to(tmp_path / "rescued" / files.RESCUE_RUN)


def test_attention_on_a_folder_without_results_is_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["attention", str(tmp_path / "empty"), "--out", str(tmp_path / "a.json")]) == 2
    assert capsys.readouterr() == ("", f"sftbench: attention: no results in {tmp_path / 'empty'}\n")


def test_attention_names_a_file_that_is_no_result_and_a_row_whose_shapes_it_cannot_replay(store, written, tmp_path,
                                                                                          capsys):
    (tmp_path / "notes.json").write_text("[1, 2]")
    assert main(["attention", str(tmp_path / "notes.json"), "--out", str(tmp_path / "a.json")]) == 2
    assert "notes.json is not an sftbench file" in capsys.readouterr().err
    assert main(["attention", str(written), "--out", str(tmp_path / "a.json")]) == 2  # a baseline without weights
    assert "the result has no traced steps' weights" in capsys.readouterr().err and not (tmp_path / "a.json").exists()


# --- kernels ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("json_option", [[], ["--json"]])
def test_kernels_shows_the_results_and_names_a_file_that_is_no_result_and_fails(store, result_factory, capsys,
                                                                               json_option):
    written = store.write(result_factory(SPEC, **TRACED), rows_of(SPEC), {})
    (written.parent / "notes.json").write_text('{"outcome": "ok"}')
    assert main(["kernels", str(written.parent), *json_option]) == 2
    captured = capsys.readouterr()
    assert SPEC.key in captured.out
    assert captured.err == (f"sftbench: skipped {written.parent / 'notes.json'} is not an sftbench file (it names no "
                            "schema, and is no result of schema 1)\n")


# --- every command ------------------------------------------------------------------------------------------------


def test_output_into_a_pipe_whose_reader_has_gone_ends_quietly(store, result_factory):
    written = store.write(result_factory(SPEC, **TRACED), rows_of(SPEC), {})
    read, write = os.pipe()
    os.close(read)  # as `| head` closes it after the lines it wanted
    try:
        done = subprocess.run([sys.executable, "-m", "sftbench", "kernels", str(written.parent)], stdout=write,
                              stderr=subprocess.PIPE, text=True, timeout=120, check=False)
    finally:
        os.close(write)
    assert (done.returncode, done.stderr) == (1, "")


COMMANDS = ["models", "baselines", "report", "history", "run", "profile", "projection", "frontier", "frontiers",
            "upgrade", "kernels", "attention", "selftest"]


def test_help_lists_every_command_with_what_it_does_and_its_description_none_by_hand(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["--help"])
    assert exit.value.code == 0
    _, description, listing = capsys.readouterr().out.split("\n\n", 2)  # usage, description, the rest
    assert re.findall(r"^    (\w+)(?: |$)", listing, re.MULTILINE) == COMMANDS
    assert [command for command in COMMANDS if re.search(rf"\b{command}\b", description)] == []  # a list goes stale


# --- models -------------------------------------------------------------------------------------------------------


def test_models_says_what_it_does_before_its_silent_seconds(monkeypatch, capsys):
    from sftbench import models

    monkeypatch.setattr(models, "models_summary", lambda lora_configs: {})
    assert main(["models", "--json"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "{}\n"
    assert captured.err == ("sftbench: building the 10 seed model types on the meta device to count their "
                            "parameters ...\n")
