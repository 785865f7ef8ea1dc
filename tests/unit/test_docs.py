"""The README and the guide name only commands and options that exist, and the versions the repository pins."""

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from sftbench.__main__ import main

ROOT = Path(__file__).parents[2]
DOCS = [ROOT / "README.md", ROOT / "docs" / "guide.md"]


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: path.name)
def test_every_pytest_option_the_docs_name_is_sftbenchs(doc, pytestconfig):
    named = set(re.findall(r"--sftbench-[a-z-]+", doc.read_text()))
    assert named
    known = {option for option in named if pytestconfig.getoption(option.removeprefix("--").replace("-", "_"),
                                                                  default="missing") != "missing"}
    assert named == known, sorted(named - known)


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: path.name)
def test_every_sftbench_command_line_in_the_docs_parses(doc, capsys):
    lines = [line.split("#")[0] for line in doc.read_text().splitlines() if line.startswith("python -m sftbench ")]
    assert lines or doc.name == "README.md"
    for line in lines:
        words = shlex.split(line)[3:]
        with pytest.raises(SystemExit) as exit_:
            main([words[0], "--help"])
        assert exit_.value.code == 0, line
        usage = capsys.readouterr().out
        for option in (word.split("=")[0] for word in words if word.startswith("--")):
            assert option in usage, f"{line}: python -m sftbench {words[0]} has no {option}"


def test_the_readme_names_the_torch_make_installs_and_the_torch_of_the_baselines():
    readme = (ROOT / "README.md").read_text().replace("\n", " ")
    installed = re.search(r"^TORCH \?= torch==(\S+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)[1]
    [measured] = {json.loads(path.read_text())["result"]["versions"]["torch"]
                  for path in (ROOT / "baselines").rglob("*.json")}
    assert f"`make` installs torch {installed} " in readme
    assert f"measured with torch {measured} " in readme


def test_the_readme_says_where_the_commands_run_and_what_make_passes_to_pytest():
    readme = (ROOT / "README.md").read_text().replace("\n", " ")
    venv = re.search(r"^VENV \?= (\S+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)[1]
    assert f"Everything is installed into `{venv}`" in readme
    assert f"`source {venv}/bin/activate`" in readme and f"`{venv}/bin/python -m sftbench baselines`" in readme
    assert 'make bench ARGS="-k qwen-7b"   # ARGS: more pytest options' in readme


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_says_what_it_installs_and_bench_gives_each_skips_reason(tmp_path):
    """What `make bench` runs on a fresh machine (make -n: printed, not run)."""
    lines = subprocess.run(["make", "-n", "bench", f"VENV={tmp_path}", "ARGS=-k qwen-7b"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.splitlines()
    [install] = [i for i, line in enumerate(lines) if "-c constraints.txt" in line]
    assert lines[install - 1].startswith('echo "installing torch==') and f"into {tmp_path}" in lines[install - 1]
    assert " -q " in lines[install]  # pip says nothing more
    pytest_words = shlex.split(lines[-1])
    assert pytest_words[1:4] == ["-m", "pytest", "tests/benchmarks"] and pytest_words[-2:] == ["-k", "qwen-7b"]
    [summary] = [word for word in pytest_words if word.startswith("-r")]
    assert {"f", "E", "s"} <= set(summary[2:])
