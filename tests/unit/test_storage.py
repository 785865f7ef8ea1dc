"""sftbench.storage: every file sftbench writes or reads, one schema policy, checks naming the file and the field,
schema 1 read through its migration, baselines by GPU, atomic writes, rescued files, one run per folder."""

import json
import os
import re
import stat
from collections import Counter
from pathlib import Path

import pytest

from sftbench import user_catalog
from sftbench.catalog import rows_of
from sftbench.report.frontier import read_frontier
from sftbench.result import MemoryCategories, MemoryGroup
from sftbench.spec import CaseSpec
from sftbench.storage import files, locks, schema
from sftbench.storage.baselines import BaselineError, BaselineStore, listing
from sftbench.storage.records import SelfTestFile, read_record, read_records
from sftbench.storage.results import ResultStore, read_result, scan_results

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_ROWS = [row for t in user_catalog.load([REPO / "examples" / "current-models.toml"]) for row in t.rows]
SPEC = CaseSpec("qwen-7b-chat", max_length=4096)


def rewrite(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data).replace('"NaN"', "NaN").replace('"Infinity"', "Infinity"))


# --- results ---------------------------------------------------------------------------------------------------


def test_a_result_round_trips_through_its_file(tmp_path, result_factory, kernels_factory):
    result = result_factory(versions={"torch": "2.13.0", "flash-attn": None},
                            kernels=kernels_factory(["nvjet_a"], [(2048, 1000.0, [[0, 3, 5000]]), (0, 63.0, [[0, 1, 9]])]))
    result.memory.categories = MemoryCategories(100.0, 10.0, 50.0, 10.0, 20.0, 10.0, 4.0,
                                                [MemoryGroup("`x = f(y)` (qwen.py:12)", 6.0, 3)])
    path = ResultStore(tmp_path).write(result)
    data = json.loads(path.read_text())
    assert path == tmp_path / "nvidia-h200" / f"{SPEC.key}.json"
    assert (data["schema"], data["kind"], set(data)) == (2, "result", {"schema", "kind", "result"})
    assert set(data["result"]) >= {"timing", "kernels", "memory"}  # each tracker's record nested in the result
    assert read_result(path) == result


def test_the_result_store_keeps_every_result_of_a_configuration(tmp_path, result_factory):
    store = ResultStore(tmp_path)
    paths = [store.write(result_factory(minutes=minutes)) for minutes in (10.0, 11.0, 12.0)]
    assert [p.name for p in paths] == [f"{SPEC.key}.json", f"{SPEC.key}.2.json", f"{SPEC.key}.3.json"]
    assert [read_result(p).timing.minutes_per_1000_samples for p in paths] == [10.0, 11.0, 12.0]
    assert ResultStore(tmp_path).earlier() == sorted(paths)


def test_a_folder_scan_reads_results_and_baselines_and_names_each_bad_file(tmp_path, result_factory):
    a, b = result_factory(CaseSpec("qwen-7b-chat", max_length=512)), result_factory()
    ResultStore(tmp_path / "results").write(a)
    BaselineStore(tmp_path / "results").write(b, rows_of(SPEC), {})
    (tmp_path / "results" / "nvidia-h200" / "bad.json").write_text("{")
    results, problems = scan_results(tmp_path / "results" / "nvidia-h200")
    assert results == {a.key: a, b.key: b}
    assert len(problems) == 1 and problems[0].startswith(f"{tmp_path / 'results' / 'nvidia-h200' / 'bad.json'} "
                                                         "cannot be read (JSONDecodeError")


def test_files_follow_the_umask_like_any_file_of_the_users(tmp_path, result_factory):
    path = ResultStore(tmp_path).write(result_factory())
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~files.UMASK and stat.S_IMODE(path.stat().st_mode) & 0o044


# --- the schema policy -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("change, problem", [
    (lambda r: r["timing"].__setitem__("step_durations_s", ["0.5", 0.25, 0.125]),
     "field result.timing.step_durations_s[0]: Input should be a valid number (got '0.5')"),
    (lambda r: r["timing"].__setitem__("step_durations_s", ["NaN", 0.25, 0.125]),
     "field result.timing.step_durations_s[0]: Input should be a finite number (got nan)"),
    (lambda r: r["timing"].__setitem__("step_tokens", [4096, 2048]),
     "field timing.step_durations_s: 3 steps but 2 in timing.step_tokens"),
    (lambda r: r.__setitem__("machine", "NVIDIA H200"), "field result.machine: Input should be an object (got 'NVIDIA H200')"),
    (lambda r: r.__setitem__("versions", ["torch 2.11"]), "field result.versions: Input should be an object (got ['torch 2.11'])"),
    (lambda r: r["machine"].__setitem__("host", "GPU-a0"), "field result.machine.host: Input should be a valid array (got 'GPU-a0')"),
    (lambda r: r.__setitem__("tokens_per_second", 1.0), "field result.tokens_per_second: Unexpected keyword argument"),
    (lambda r: r.__setitem__("outcome", "crashed"), "field result.outcome: Input should be 'ok', 'oom' or 'error'"),
    (lambda r: r.__delitem__("key"), "field result.key: Field required"),
])
def test_a_field_of_the_wrong_type_is_one_line_naming_the_file_and_the_field(tmp_path, result_factory, change,
                                                                             problem):
    path = ResultStore(tmp_path).write(result_factory())
    rewrite(path, lambda data: change(data["result"]))
    with pytest.raises(schema.StorageError) as error:
        read_result(path)
    assert str(error.value).startswith(f"{path}: {problem}") and "\n" not in str(error.value)


@pytest.mark.parametrize("data, problem", [
    ({"schema": 3, "kind": "result", "result": {}}, ("schema 3: this sftbench reads schemas 1 and 2 (a newer sftbench "
                                                     "wrote it, or it is not an sftbench file)")),
    ({"schema": "x"}, "schema 'x': this sftbench reads schemas 1 and 2"),
    ([1, 2], "is not an sftbench file (it names no schema, and is no result of schema 1)"),
    ({"schema": 2, "kind": "notes"}, "is of no kind sftbench writes, not a result"),
    ({"schema": 2, "kind": "run record", "record": {}}, "is a run record, not a result"),
    ({"clean_reruns": []}, "is a self-test, not a result"),
])
def test_a_file_of_an_unknown_schema_or_another_kind_is_refused_naming_it(tmp_path, data, problem):
    path = tmp_path / "x.json"
    path.write_text(json.dumps(data))
    with pytest.raises(schema.StorageError) as error:
        read_result(path)
    assert re.match(f"^{re.escape(str(path))}:? {re.escape(problem)}", str(error.value))


def test_a_schema_1_result_is_read_through_the_migration(tmp_path):
    baseline = REPO / "baselines" / "nvidia-h200" / "qwen-7b-chat.lora.bf16.len512.bs1.gc.flash_attention_2.r8-DEFAULT.json"
    old = json.loads(baseline.read_text())["result"]
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))  # a schema-1 result file: the bare result
    result = read_result(path)
    assert result.timing.minutes_per_1000_samples == old["minutes_per_1000_samples"]
    assert result.kernels.gpu_minutes_per_1000_samples == old["gpu_minutes_per_1000_samples"]
    assert [s.tokens for s in result.kernels.steps] == old["kernel_step_tokens"] == [512, 107, 0]
    assert [s.weight for s in result.kernels.steps] == old["kernel_step_weights"]
    assert result.kernels.steps[0].kernels == old["kernel_step_kernels"][0]
    assert result.kernels.rules is None  # its families are classified again, by today's rules
    assert result.kernels.busy_pct == old["gpu_busy_pct"] and result.kernels.clock_limits == {}


def test_schema_1_steps_of_unequal_length_are_refused_naming_the_field(tmp_path):
    baseline = REPO / "baselines" / "nvidia-h200" / "qwen-7b-chat.lora.bf16.len512.bs1.gc.flash_attention_2.r8-DEFAULT.json"
    old = json.loads(baseline.read_text())["result"]
    old["kernel_step_weights"] = old["kernel_step_weights"][:2]
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    with pytest.raises(schema.StorageError, match=r"old.json: field kernel_step_weights: 2 values for 3 traced steps$"):
        read_result(path)


def test_every_committed_result_baseline_run_record_and_self_test_loads(tmp_path, unpack):
    baselines, errors = BaselineStore(REPO / "baselines").scan()
    assert not errors, errors
    seed = Counter(b.result.machine.get("gpu") for b in baselines if b.result.case.get("user_model") is None)
    assert seed == {"NVIDIA H200": 51, "NVIDIA H100 80GB HBM3": 51}
    assert len(baselines) - sum(seed.values()) == len(EXAMPLE_ROWS)  # and the example catalog's, on the H100
    docs = REPO / "docs"
    for folder in [*docs.glob("runs-h100/*-baselines"), *docs.glob("upgrade-h*-flash-attn/baselines")]:
        baselines, errors = BaselineStore(folder).scan()
        assert baselines and not errors, (folder, errors)
    for archive in docs.glob("runs-h100/*-results/results.tar.xz"):  # a run's results, kept compressed
        unpack(archive, tmp_path / archive.parent.name)
    # A stage's results: results/<gpu>/ in the newer archives, the stage's folder itself in the older ones
    # (tracing/ holds `python -m sftbench profile`'s reports, no results; frontier/ a search's folder per row).
    stages = [stage for stage in tmp_path.glob("*/*") if stage.is_dir() and stage.name not in ("tracing", "frontier")]
    searches = list(tmp_path.glob("*/frontier/*"))
    assert searches and all(read_frontier(search).gpu == "NVIDIA H100 80GB HBM3" for search in searches)
    stages += searches
    unpacked = [gpu for stage in stages for gpu in stage.glob("nvidia-*")]
    unpacked += [stage for stage in stages if not any(stage.glob("nvidia-*"))]
    assert len(unpacked) >= 30
    for folder in [*docs.glob("upgrade-h*-flash-attn/results-*"), *docs.glob("runs-h100/*-results/*/"), *unpacked]:
        results, problems = scan_results(folder)
        assert results and not problems, (folder, problems)
    records, problems = read_records([docs / "runs-h200", docs / "runs-h100"])
    assert len(records) >= 48 and not problems, problems
    for path in docs.glob("selftest-*.json"):
        assert schema.load(path, SelfTestFile).summary["gpu"]


# --- baselines -------------------------------------------------------------------------------------------------


def test_write_stores_one_file_per_configuration_in_the_gpu_folder(store, written, result_factory):
    assert written == store.root / "nvidia-h200" / f"{SPEC.key}.json"
    assert [p.name for p in written.parent.iterdir()] == [written.name]  # atomic: no .tmp left behind
    data = json.loads(written.read_text(encoding="utf-8"))
    assert set(data) == {"schema", "kind", "rows", "tables", "metadata", "result"}
    assert (data["schema"], data["kind"]) == (2, "baseline")
    assert data["rows"] == ["test_lora_max_length[qwen-7b-chat-4096]"] and data["tables"] == ["lora_max_length"]
    assert data["metadata"]["commit"] == "abc1234" and data["metadata"]["written"]
    assert data["result"] == json.loads(json.dumps(result_factory(SPEC).to_dict()))


def test_load_reads_back_what_was_written_and_replaces_it(store, written, result_factory):
    baseline = store.load("NVIDIA H200", SPEC.key)
    assert (baseline.result, baseline.path) == (result_factory(SPEC), written)
    assert store.load("NVIDIA H100 80GB HBM3", SPEC.key) is None  # another GPU has no baseline
    assert store.load("NVIDIA H200", CaseSpec("qwen-7b-chat").key) is None
    store.write(result_factory(SPEC, minutes=12.0), rows_of(SPEC), {})
    assert [p.name for p in written.parent.iterdir()] == [written.name]
    assert store.load("NVIDIA H200", SPEC.key).result.timing.minutes_per_1000_samples == 12.0


def test_a_gpu_model_without_a_baseline_may_use_one_of_another_model_of_its_compute_capability(store, written):
    # The H200 baseline predates Machine["compute_capability"]: its GPU's is known (result.KNOWN_CAPABILITIES).
    assert store.load_same_capability("NVIDIA H100 80GB HBM3", SPEC.key, "9.0").path == written
    assert store.load_same_capability("NVIDIA A100-SXM4-80GB", SPEC.key, "8.0") is None
    assert store.load_same_capability("NVIDIA H100 80GB HBM3", SPEC.key, None) is None  # a CPU run
    assert store.load_same_capability("NVIDIA H200", SPEC.key, "9.0") is None  # its own model's is load()'s


@pytest.mark.parametrize("target", ["nowhere.json", "loop"])
def test_a_dangling_or_looping_link_is_a_baseline_error_not_a_missing_baseline(store, written, target):
    written.unlink()
    link = written
    link.symlink_to(link.parent / target if target != "loop" else link)
    with pytest.raises(BaselineError, match=f"baseline {link} cannot be read"):
        store.load("NVIDIA H200", SPEC.key)
    assert [str(link) in str(e) for e in store.scan()[1]] == [True]


def test_a_corrupt_file_is_a_baseline_error(store, written):
    written.write_text('{"schema": 2, "kind": ', encoding="utf-8")
    with pytest.raises(BaselineError, match=r"cannot be read \(JSONDecodeError.*restore it from git"):
        store.load("NVIDIA H200", SPEC.key)


def test_a_baseline_of_another_gpu_or_configuration_in_this_folder_is_refused(store, written):
    other = written.with_name(f"{CaseSpec('qwen-7b-chat').key}.json")
    written.rename(other)
    with pytest.raises(BaselineError, match=f"for '{SPEC.key}' but is stored as"):
        store.read(other)
    foreign = store.path("NVIDIA H100 80GB HBM3", SPEC.key)
    foreign.parent.mkdir()
    other.rename(foreign)
    with pytest.raises(BaselineError, match=r"measured on 'NVIDIA H200'.*stored as nvidia-h100-80gb-hbm3/.*only for "
                                            r"the GPU model"):
        store.load("NVIDIA H100 80GB HBM3", SPEC.key)


@pytest.mark.parametrize("change, problem", [
    (lambda r: r["timing"].__setitem__("minutes_per_1000_samples", None), "timing.minutes_per_1000_samples is missing"),
    (lambda r: r["timing"].__setitem__("minutes_per_1000_samples", 0),
     "timing.minutes_per_1000_samples is 0.0, not a number > 0"),
    (lambda r: r["memory"].__setitem__("max_reserved_mib", None), "memory.max_reserved_mib is missing"),
    (lambda r: r["kernels"].__setitem__("gpu_minutes_per_1000_samples", -1.0),
     "kernels.gpu_minutes_per_1000_samples is -1.0, not a number > 0"),
    (lambda r: r["kernels"].__setitem__("clock_limits", {"power cap": -1}),
     "kernels.clock_limits['power cap'] is -1, not a number >= 0"),
])
def test_a_baseline_whose_metrics_are_missing_or_not_positive_is_unusable(store, written, change, problem):
    rewrite(written, lambda data: change(data["result"]))
    with pytest.raises(BaselineError) as error:
        store.load("NVIDIA H200", SPEC.key)
    assert str(error.value) == f"baseline {written} is unusable: field {problem}; rewrite it with " \
                               "--sftbench-update-baselines"


def test_a_baseline_with_a_broken_kernel_table_is_unusable(store, result_factory, kernels_factory):
    record = kernels_factory(["nvjet_a"], [(2048, 1000.0, [[0, 1, 5]]), (2048, 0.0, [[0, 1, 5]])])
    record.steps[1].repeat_of = 0
    path = store.write(result_factory(SPEC, kernels=record), rows_of(SPEC), {})
    assert store.read(path).result.kernels == record
    rewrite(path, lambda data: data["result"]["kernels"]["steps"][0].__setitem__("kernels", [[99, 1, 5]]))
    with pytest.raises(BaselineError, match=r"field kernels.steps\[0\].kernels: \[99, 1, 5\] is not \[name index"):
        store.read(path)
    rewrite(path, lambda data: data["result"]["kernels"]["steps"][1].__setitem__("repeat_of", 1))
    with pytest.raises(BaselineError, match=r"field kernels.steps\[1\].repeat_of: 1 is no earlier traced step"):
        store.read(path)


def test_older_and_cpu_baselines_need_no_gpu_metrics_even_from_a_gpu_host(store, result_factory):
    older = result_factory(SPEC, gpu_minutes_per_1000_samples=None, wall_noise_pct=None)
    cpu = result_factory(SPEC, gpu="cpu", reserved=None, allocated=None)
    smoke = CaseSpec("tiny-qwen", max_length=512, device="cpu", attention="sdpa")
    smoke_on_gpu_host = result_factory(smoke, gpu="NVIDIA H100 80GB HBM3", reserved=None, allocated=None)
    oom = result_factory(SPEC, outcome="oom", minutes=None)  # an OOM has no speed to compare
    for result in (older, cpu, smoke_on_gpu_host, oom):
        assert store.read(store.write(result, rows_of(SPEC), {})).result == result


def test_the_default_configuration_lists_one_entry_per_row(store, result_factory):
    default = CaseSpec("qwen-7b-chat")
    store.write(result_factory(default), rows_of(default), {})
    store.write(result_factory(SPEC, minutes=11.0, reserved=29000.0), rows_of(SPEC), {})
    baselines, errors = store.scan()
    entries = listing(baselines)
    assert errors == [] and len(entries) == len(rows_of(default)) + 1
    entry = next(e for e in entries if e["case_id"] == "qwen-7b-chat-4096")
    assert (entry["test"], entry["tables"], entry["gpu"], entry["outcome"]) == (
        "test_lora_max_length", ["lora_max_length"], "NVIDIA H200", "ok")
    assert (entry["max_reserved_mib"], entry["minutes_per_1000_samples"]) == (29000.0, 11.0)
    assert entry["tokens_per_s"] == pytest.approx(2_800_000 / 660) and entry["versions"]["torch"] == "2.11.0"


def test_the_committed_baselines_stand_for_their_catalog_rows():
    baselines, _ = BaselineStore(REPO / "baselines").scan()
    for baseline in baselines:
        rows = (rows_of(CaseSpec(**baseline.result.case)) if baseline.result.case.get("user_model") is None else
                [row for row in EXAMPLE_ROWS if row.spec.key == baseline.result.key])
        assert baseline.rows == [row.node_id for row in rows], baseline.path
        assert baseline.tables == sorted({row.table for row in rows}), baseline.path


# --- run records -----------------------------------------------------------------------------------------------


def test_a_schema_1_run_record_keeps_its_verdicts_as_recorded_text():
    path = REPO / "docs" / "runs-h200" / "2026-12-04-gpu-c-gemm5.json"
    old = json.loads(path.read_text())
    record = read_record(path)
    assert (record.started, record.commit, record.gpu) == (old["started"], old["commit"], old["gpu"])
    first, entry = record.configurations[0], old["configurations"][0]
    assert (first.key, first.status, first.verdict.recorded_as_text) == (entry["key"], entry["verdict"], True)
    from sftbench import render

    assert render.label(first.verdict) == entry["label"]
    assert render.explain(first.verdict) == [line.strip() for line in entry["explanation"]]


def test_a_record_that_is_not_one_is_named(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"schema": 2, "kind": "run record", "record": {"started": "x"}}))
    (tmp_path / "b.json").write_text("[]")
    records, problems = read_records([tmp_path])
    assert records == [] and [p.split(" ")[0].rstrip(":") for p in problems] == [str(tmp_path / "a.json"),
                                                                                 str(tmp_path / "b.json")]


# --- atomic writes, the rescue folder, locks -------------------------------------------------------------------


def test_a_file_that_cannot_be_written_is_rescued_under_its_whole_path_in_this_runs_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "RESCUE_DIR", tmp_path / "rescued")
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where a folder should be")
    result, baseline = blocked / "results" / "gpu" / "k.json", blocked / "baselines" / "gpu" / "k.json"
    rescued = []
    for path in (result, baseline):
        with pytest.raises(files.NotWritten) as error:
            files.write_atomically(path, path.parent.parent.name)
        rescued.append(files.rescue_path(path))
        assert str(error.value).endswith(f"it is in {rescued[-1]} instead")
    assert rescued[0] != rescued[1] and rescued[0].parent.parent.parent == tmp_path / "rescued" / files.RESCUE_RUN / \
        result.relative_to("/").parent.parent.parent
    assert [p.read_text() for p in rescued] == ["results", "baselines"]


def test_one_run_at_a_time_holds_a_folder_whatever_its_temporary_folder(tmp_path, monkeypatch):
    held = locks.hold(tmp_path / "baselines" / "nvidia-h200", "busy")
    monkeypatch.setenv("TMPDIR", str(tmp_path / "elsewhere"))
    with pytest.raises(locks.FolderBusy, match="^busy$"):
        locks.hold(tmp_path / "baselines" / "nvidia-h200", "busy")
    assert (tmp_path / "baselines" / "nvidia-h200" / locks.LOCK_NAME).exists()
    locks.release([held])
    locks.release([locks.hold(tmp_path / "baselines" / "nvidia-h200", "busy")])
    assert locks.LOCK_NAME in os.listdir(tmp_path / "baselines" / "nvidia-h200")
