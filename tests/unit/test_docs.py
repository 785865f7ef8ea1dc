"""The README and the guide name only commands and options that exist, and the versions the repository pins."""

import json
import os
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


def command_problems(text: str, pytestconfig) -> tuple[int, list[str]]:
    """(how many command lines `text` shows, what is wrong with them): every `python -m sftbench ...` (in a code
    block, or in backticks in a sentence) must name a command that exists and only its options; every `pytest ...`
    line of a code block only sftbench's and pytest's own options."""
    problems = []
    commands = [c for c in re.findall(r"python -m sftbench ([^`#\n]*)", text) if not c.startswith("...")]
    for command in commands:
        words = shlex.split(command)
        try:
            main([words[0], "--help"])
        except SystemExit as exit_:
            if exit_.code != 0:
                problems.append(f"python -m sftbench {command}: no command {words[0]!r}")
                continue
        usage = main_usage(words[0])
        problems += [f"python -m sftbench {command}: {words[0]} has no {option}"
                     for option in (word.split("=")[0] for word in words if word.startswith("--")) if option not in usage]
    lines = re.findall(r"^(?:\.venv/bin/)?pytest (.*?)(?:\s+#.*)?$", text, re.MULTILINE)
    for line in lines:
        for option in (word.split("=")[0] for word in shlex.split(line) if word.startswith("--")):
            name = option.removeprefix("--").replace("-", "_")
            if pytestconfig.getoption(name, default="missing") == "missing" and option not in PYTEST_OPTIONS:
                problems.append(f"pytest {line}: no option {option}")
    return len(commands) + len(lines), problems


PYTEST_OPTIONS = {"--collect-only", "--benchmark-compare", "--benchmark-autosave", "--benchmark-json"}


def main_usage(command: str) -> str:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        main([command, "--help"])
    return out.getvalue()


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: path.name)
def test_every_command_line_in_the_docs_names_commands_and_options_that_exist(doc, pytestconfig):
    count, problems = command_problems(doc.read_text(), pytestconfig)
    assert count >= 8 and problems == []


@pytest.mark.parametrize("text, problem", [
    ("`python -m sftbench baselines --nope`", "baselines has no --nope"),
    ("`python -m sftbench nothing`", "no command 'nothing'"),
    ("```\npytest tests/benchmarks --sftbench-no-such-option  # a comment\n```", "no option --sftbench-no-such-option"),
])
def test_a_wrong_command_line_is_found(text, problem, pytestconfig):
    assert problem in " ".join(command_problems(text, pytestconfig)[1])


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
    """What `make bench` runs on a fresh machine (make -n: printed, not run). Under `make test` (as CI runs the
    tests) the inner make inherits the outer one's flags and names the folders it enters and leaves: not here."""
    outer = {"MAKEFLAGS", "MFLAGS", "MAKELEVEL"}
    lines = subprocess.run(["make", "--no-print-directory", "-n", "bench", f"VENV={tmp_path}", "ARGS=-k qwen-7b"],
                           cwd=ROOT, capture_output=True, text=True, check=True,
                           env={k: v for k, v in os.environ.items() if k not in outer}).stdout.splitlines()
    [install] = [i for i, line in enumerate(lines) if "-c constraints.txt" in line]
    assert lines[install - 1].startswith('echo "installing torch==') and f"into {tmp_path}" in lines[install - 1]
    assert " -q " in lines[install]  # pip says nothing more
    pytest_words = shlex.split(lines[-1])
    assert pytest_words[1:4] == ["-m", "pytest", "tests/benchmarks"] and pytest_words[-2:] == ["-k", "qwen-7b"]
    [summary] = [word for word in pytest_words if word.startswith("-r")]
    assert {"f", "E", "s"} <= set(summary[2:])
