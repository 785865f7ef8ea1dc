"""sftbench.baselines: the store (write, load, list, refuse), compare() and its explanation, the CLI listing."""

import json
import re
from pathlib import Path

import pytest

from sftbench.baselines import SCHEMA, Baseline, BaselineError, BaselineStore, Tolerances, compare, listing
from sftbench.catalog import rows_of
from sftbench.spec import CaseSpec

REPO = Path(__file__).resolve().parents[2]
SPEC = CaseSpec("qwen-7b-chat", max_length=4096)
TOLERANCES = Tolerances(time_pct=5.0, memory_pct=2.0)


@pytest.fixture
def store(tmp_path):
    return BaselineStore(tmp_path / "baselines")


@pytest.fixture
def written(store, result_factory):
    """A baseline of SPEC measured on an H200, written to the store."""
    path = store.write(result_factory(SPEC), rows_of(SPEC), {"commit": "abc1234", "mode": "quick"})
    return path


def baseline_of(result) -> Baseline:
    return Baseline(result, [], [], {}, Path("unused.json"))


# --- the store -------------------------------------------------------------------------------------------------


def test_write_stores_one_file_per_configuration_in_the_gpu_folder(store, written, result_factory):
    assert written == store.root / "nvidia-h200" / f"{SPEC.key}.json"
    assert [p.name for p in written.parent.iterdir()] == [written.name]  # atomic: no .tmp left behind
    data = json.loads(written.read_text(encoding="utf-8"))
    assert set(data) == {"schema", "key", "rows", "tables", "metadata", "result"}
    assert data["schema"] == SCHEMA and data["key"] == SPEC.key
    assert data["rows"] == ["test_lora_max_length[qwen-7b-chat-4096]"]
    assert data["tables"] == ["lora_max_length"]
    assert data["metadata"]["commit"] == "abc1234" and data["metadata"]["written"]
    assert data["result"] == result_factory(SPEC).to_dict()


def test_write_replaces_the_previous_baseline(store, written, result_factory):
    store.write(result_factory(SPEC, minutes=12.0), rows_of(SPEC), {})
    assert [p.name for p in written.parent.iterdir()] == [written.name]
    assert store.load("NVIDIA H200", SPEC.key).result.minutes_per_1000_samples == 12.0


def test_load_reads_back_what_was_written(store, written, result_factory):
    baseline = store.load("NVIDIA H200", SPEC.key)
    assert baseline.result == result_factory(SPEC)
    assert baseline.rows == ["test_lora_max_length[qwen-7b-chat-4096]"]
    assert baseline.tables == ["lora_max_length"]
    assert baseline.path == written
    assert store.load("NVIDIA H100 80GB HBM3", SPEC.key) is None  # another GPU has no baseline
    assert store.load("NVIDIA H200", CaseSpec("qwen-7b-chat").key) is None


def test_the_default_configuration_lists_one_entry_per_row(store, result_factory):
    default = CaseSpec("qwen-7b-chat")
    store.write(result_factory(default), rows_of(default), {})
    store.write(result_factory(SPEC, minutes=11.0, reserved=29000.0), rows_of(SPEC), {})
    baselines, errors = store.scan()
    entries = listing(baselines)
    assert errors == []
    assert len(entries) == len(rows_of(default)) + 1
    assert {e["case_id"] for e in entries} >= {"qwen-7b-chat-4096", "qwen-7b-chat-bf16", "qwen-7b-chat-bs1"}
    entry = next(e for e in entries if e["case_id"] == "qwen-7b-chat-4096")
    assert entry["test"] == "test_lora_max_length" and entry["tables"] == ["lora_max_length"]
    assert entry["gpu"] == "NVIDIA H200" and entry["outcome"] == "ok"
    assert (entry["max_reserved_mib"], entry["max_allocated_mib"]) == (29000.0, 900.0)
    assert entry["minutes_per_1000_samples"] == 11.0
    assert entry["tokens_per_s"] == pytest.approx(2_800_000 / 660)
    assert (entry["attention"], entry["quantization"]) == ("flash_attention_2", "bf16")
    assert entry["trainable_params"] == 4_194_304
    assert entry["versions"]["torch"] == "2.11.0"


def test_scan_reads_every_gpu_folder(store, written, result_factory):
    store.write(result_factory(SPEC, gpu="NVIDIA H100 80GB HBM3"), rows_of(SPEC), {})
    baselines, errors = store.scan()
    assert sorted(b.path.parent.name for b in baselines) == ["nvidia-h100-80gb-hbm3", "nvidia-h200"] and not errors
    assert BaselineStore(store.root / "missing").scan() == ([], [])


def test_a_corrupt_file_is_a_baseline_error(store, written):
    written.write_text('{"schema": 1, "key": ', encoding="utf-8")
    with pytest.raises(BaselineError, match=r"is corrupt \(JSONDecodeError.*restore it from git"):
        store.load("NVIDIA H200", SPEC.key)
    [error] = store.scan()[1]
    assert isinstance(error, BaselineError) and re.search(SPEC.key, str(error))


def test_a_result_with_unknown_fields_is_a_baseline_error(store, written):
    data = json.loads(written.read_text())
    data["result"]["speed"] = 3
    written.write_text(json.dumps(data))
    with pytest.raises(BaselineError, match="corrupt.*unknown result fields: speed"):
        store.load("NVIDIA H200", SPEC.key)


def test_another_schema_is_a_baseline_error(store, written):
    data = json.loads(written.read_text())
    data["schema"] = SCHEMA + 1
    written.write_text(json.dumps(data))
    with pytest.raises(BaselineError, match=rf"{SPEC.key}.json: schema {SCHEMA + 1}, this sftbench reads schema"):
        store.load("NVIDIA H200", SPEC.key)


def test_a_baseline_of_another_gpu_in_this_folder_is_refused(store, written):
    foreign = store.path("NVIDIA H100 80GB HBM3", SPEC.key)
    foreign.parent.mkdir()
    written.rename(foreign)
    with pytest.raises(BaselineError, match=r"measured on 'NVIDIA H200'.*stored as nvidia-h100-80gb-hbm3/.*only for "
                                            r"the GPU model"):
        store.load("NVIDIA H100 80GB HBM3", SPEC.key)


def test_a_baseline_under_another_configuration_name_is_refused(store, written):
    other = written.with_name(f"{CaseSpec('qwen-7b-chat').key}.json")
    written.rename(other)
    with pytest.raises(BaselineError, match=f"for '{SPEC.key}' but is stored as"):
        store.read(other)


@pytest.mark.parametrize("text", ["[1, 2]", "{missing key}"])
def test_valid_json_of_the_wrong_shape_is_a_baseline_error(store, written, text):
    if text == "{missing key}":
        data = json.loads(written.read_text())
        del data["key"]
        text = json.dumps(data)
    written.write_text(text)
    with pytest.raises(BaselineError, match="corrupt"):
        store.load("NVIDIA H200", SPEC.key)


@pytest.mark.parametrize("field, value, problem", [
    ("minutes_per_1000_samples", None, "minutes_per_1000_samples is missing"),
    ("minutes_per_1000_samples", 0, "minutes_per_1000_samples is 0, not a finite number > 0"),
    ("minutes_per_1000_samples", -2.0, "minutes_per_1000_samples is -2.0, not a finite number > 0"),
    ("minutes_per_1000_samples", "NaN", "minutes_per_1000_samples is nan, not a finite number > 0"),
    ("minutes_per_1000_samples", "abc", "minutes_per_1000_samples is 'abc', not a number"),
    ("minutes_per_1000_samples", True, "minutes_per_1000_samples is True, not a number"),
    ("memory.max_reserved_mib", None, "max_reserved_mib is missing"),
    ("gpu_minutes_per_1000_samples", 0.0, "gpu_minutes_per_1000_samples is 0.0, not a finite number > 0"),
    ("wall_noise_pct", "Infinity", "wall_noise_pct is inf, not a finite number >= 0"),
    ("kernel_step_s", [0.1, -1], "kernel_step_s[1] is -1, not a finite number > 0"),
    ("kernel_step_sm_mhz", [1980, "fast"], "kernel_step_sm_mhz[1] is 'fast', not a number"),
    ("kernel_clock_limits", {"power cap": -1}, "kernel_clock_limits['power cap'] is -1, not a finite number >= 0"),
    ("kernel_clock_limits", ["power cap"], "kernel_clock_limits is ['power cap'], not a mapping"),
    ("machine.host", "GPU-a0", "machine.host is 'GPU-a0', not a list of names"),
    ("machine.host", [7], "machine.host is [7], not a list of names"),
])
def test_a_baseline_whose_metrics_are_missing_or_not_positive_numbers_is_unusable(store, written, field, value,
                                                                                 problem):
    data = json.loads(written.read_text())
    holder, _, name = field.rpartition(".")
    (data["result"][holder] if holder else data["result"])[name] = value
    written.write_text(json.dumps(data).replace('"NaN"', "NaN").replace('"Infinity"', "Infinity"))
    with pytest.raises(BaselineError) as error:
        store.load("NVIDIA H200", SPEC.key)
    assert str(error.value) == (f"baseline {written} is unusable: {problem}; rewrite it with "
                                "--sftbench-update-baselines")


def test_optional_metrics_of_older_baselines_may_be_absent_and_cpu_baselines_need_no_gpu_memory(store, result_factory):
    older = result_factory(SPEC, gpu_minutes_per_1000_samples=None, wall_noise_pct=None, kernel_step_s=[])
    cpu = result_factory(SPEC, gpu="cpu", reserved=None, allocated=None)
    for result in (older, cpu):
        path = store.write(result, rows_of(SPEC), {})
        assert store.read(path).result == result
    oom = result_factory(SPEC, outcome="oom", minutes=None)  # an OOM has no speed to compare
    assert store.read(store.write(oom, rows_of(SPEC), {})).result.outcome == "oom"


def test_a_scan_lists_the_good_baselines_and_names_each_bad_one(store, written, result_factory):
    other = store.write(result_factory(CaseSpec("qwen-7b-chat", max_length=2048)), rows_of(SPEC), {})
    written.write_text("{")
    baselines, errors = store.scan()
    assert [b.path for b in baselines] == [other]
    assert [str(written) in str(e) and "is corrupt" in str(e) for e in errors] == [True]


def test_the_committed_baselines_load():
    baselines, errors = BaselineStore(REPO / "baselines").scan()
    assert baselines and not errors, ("the repository holds baselines, every one usable", errors)
    for baseline in baselines:
        rows = rows_of(CaseSpec(**baseline.result.case))
        assert rows, f"{baseline.path}: a configuration of no catalog row"
        assert baseline.rows == [row.node_id for row in rows], baseline.path
        assert baseline.tables == sorted({row.table for row in rows}), baseline.path


# --- compare ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("minutes, reserved, allocated, verdict, worse_or_better", [
    (10.4, 1010.0, 905.0, "pass", []),  # within 5% time and 2% memory
    (9.6, 990.0, 890.0, "pass", []),
    (10.6, 1000.0, 900.0, "regression", ["minutes_per_1000_samples"]),
    (10.0, 1030.0, 900.0, "regression", ["max_reserved_mib"]),
    (10.0, 1000.0, 920.0, "regression", ["max_allocated_mib"]),
    (9.0, 1000.0, 900.0, "improvement", ["minutes_per_1000_samples"]),
    (10.0, 970.0, 900.0, "improvement", ["max_reserved_mib"]),
    (9.0, 1030.0, 900.0, "regression", ["minutes_per_1000_samples", "max_reserved_mib"]),  # worse wins
])
def test_compare_checks_each_metric_against_its_tolerance(result_factory, minutes, reserved, allocated, verdict,
                                                          worse_or_better):
    now = result_factory(minutes=minutes, reserved=reserved, allocated=allocated)
    comparison = compare(now, baseline_of(result_factory()), TOLERANCES)
    assert comparison.verdict == verdict
    assert [c.metric for c in comparison.changes if c.verdict != "same"] == worse_or_better
    assert {c.metric: c.tolerance_pct for c in comparison.changes} == {
        "minutes_per_1000_samples": 5.0, "max_reserved_mib": 2.0, "max_allocated_mib": 2.0}


def test_compare_skips_metrics_one_side_lacks(result_factory):
    # A CPU run has no allocator peaks: only its time is compared.
    now = result_factory(minutes=20.0, reserved=None, allocated=None)
    comparison = compare(now, baseline_of(result_factory()), TOLERANCES)
    assert [c.metric for c in comparison.changes] == ["minutes_per_1000_samples"]
    assert comparison.verdict == "regression"


@pytest.mark.parametrize("old, new, verdict", [
    ("ok", "oom", "regression"),
    ("oom", "ok", "improvement"),
    ("oom", "oom", "pass"),
])
def test_compare_outcomes(result_factory, old, new, verdict):
    def of(outcome):
        if outcome == "oom":
            return result_factory(outcome="oom", message="CUDA out of memory. Tried to allocate 2 GiB", minutes=None)
        return result_factory()

    comparison = compare(of(new), baseline_of(of(old)), TOLERANCES)
    assert comparison.verdict == verdict
    assert comparison.changes == []
    if (old, new) == ("ok", "oom"):
        assert "now OOMs: CUDA out of memory. Tried to allocate 2 GiB" in comparison.explain("case")


def test_compare_without_a_baseline(result_factory):
    comparison = compare(result_factory(), None, TOLERANCES)
    assert comparison.verdict == "no-baseline"
    assert "no baseline for NVIDIA H200" in comparison.explain("case")


@pytest.mark.parametrize("change", [{"attention": "sdpa"}, {"quantization_backend": "gptqmodel"}, {"mode": "full"}])
def test_compare_refuses_another_kernel_backend_or_mode(result_factory, change):
    comparison = compare(result_factory(minutes=1.0, **change), baseline_of(result_factory()), TOLERANCES)
    assert comparison.verdict == "not-comparable"
    assert comparison.changes == []
    assert "baseline ran attention=flash_attention_2" in comparison.explain("case")


def test_an_oom_while_building_is_a_regression_not_a_mismatch(result_factory):
    # The build OOMed: no kernel or backend was recorded, yet the OOM must fail the case.
    oom = result_factory(outcome="oom", message="CUDA out of memory", attention=None, minutes=None, reserved=80000.0)
    comparison = compare(oom, baseline_of(result_factory()), TOLERANCES)
    assert comparison.verdict == "regression"
    assert "fitted in the baseline, now OOMs" in comparison.explain("case")


def test_a_quantization_library_upgrade_is_compared_not_excluded(result_factory):
    old = result_factory(quantization_backend="bitsandbytes 0.50.2 / Linear4bit nf4, double quant, bfloat16 compute")
    new = result_factory(minutes=20.0,
                         quantization_backend="bitsandbytes 0.51.0.dev1 / Linear4bit nf4, double quant, bfloat16 compute")
    assert compare(new, baseline_of(old), TOLERANCES).verdict == "regression"
    other_layer = result_factory(quantization_backend="bitsandbytes 0.50.2 / Linear8bitLt")
    assert compare(other_layer, baseline_of(old), TOLERANCES).verdict == "not-comparable"


def test_explain_names_the_case_metric_values_delta_tolerance_and_versions(result_factory):
    versions = {**result_factory().versions, "torch": "2.13.0", "sftbench": "0.2.0"}
    now = result_factory(minutes=12.0, versions=versions)
    text = compare(now, baseline_of(result_factory()), TOLERANCES).explain("test_lora_max_length[qwen-7b-chat-4096]")
    lines = text.splitlines()
    assert lines[0] == "test_lora_max_length[qwen-7b-chat-4096]: wall-time regression"  # no GPU time to tell
    assert "  minutes_per_1000_samples: 10 -> 12 (+20.0%, noise band 5%)" in lines
    assert "  versions that differ from the baseline's: torch 2.11.0 -> 2.13.0" in lines
    assert "sftbench" not in text.split(" regression", 1)[1]  # its own version is not news
    assert "max_reserved_mib" not in text  # unchanged metrics stay out


def test_explain_names_the_driver_and_settings_that_differ(result_factory):
    # The regression demo of docs/measurements.md: CUDA_LAUNCH_BLOCKING=1 set, no package changed.
    old = result_factory()
    old.machine = {**old.machine, "driver": "580.159.04", "settings": {"PYTORCH_ALLOC_CONF": "expandable_segments:True"}}
    now = result_factory(minutes=16.0)
    now.machine = {**old.machine, "driver": "590.10", "settings": {"CUDA_LAUNCH_BLOCKING": "1"}}
    text = compare(now, baseline_of(old), TOLERANCES).explain("case")
    assert ("  settings that differ from the baseline's: CUDA_LAUNCH_BLOCKING unset -> 1, "
            "PYTORCH_ALLOC_CONF expandable_segments:True -> unset, driver 580.159.04 -> 590.10") in text.splitlines()


def test_a_baseline_without_recorded_settings_claims_no_setting_changed(result_factory):
    old = result_factory()
    old.machine = {k: v for k, v in old.machine.items() if k != "settings"}
    now = result_factory()
    now.machine = {**old.machine, "settings": {"CUDA_LAUNCH_BLOCKING": "1"}}
    assert compare(now, baseline_of(old), TOLERANCES).setting_changes == {}


# --- speed: GPU kernel time first, wall time against its noise -------------------------------------------------

STEPS = [0.30 + 0.01 * i for i in range(16)]  # the quick mode's timed steps, one batch each
TOKENS = [2048 - 64 * i for i in range(16)]


def timed(result_factory, wall: float = 10.0, gpu: float | None = 8.0, step_factor: float = 1.0, noise=None, **fields):
    """A result with GPU-minutes and 16 timed steps; `step_factor` scales the steps as a slower host would."""
    return result_factory(minutes=wall, gpu_minutes_per_1000_samples=gpu, kernel_clock="cupti-python 13.0.1",
                          step_durations_s=[s * step_factor for s in STEPS], step_tokens=list(TOKENS),
                          wall_noise_pct=noise, **fields)


@pytest.mark.parametrize("gpu, wall, factor, label", [
    (8.4, 10.0, 1.0, "kernel regression"),  # GPU time +5%, wall unchanged: the GPU waited anyway
    (8.0, 13.0, 1.3, "host-side regression"),  # wall +30% in every step, GPU time flat
    (8.4, 13.0, 1.3, "kernel and host-side regression"),
    (8.1, 11.0, 1.1, "pass"),  # GPU +1.25% within 2%, wall +10% within the 20% band
])
def test_a_regression_says_its_kind(result_factory, gpu, wall, factor, label):
    comparison = compare(timed(result_factory, wall, gpu, factor), baseline_of(timed(result_factory)), Tolerances())
    assert comparison.label == label
    assert comparison.explain("case").splitlines()[0] == f"case: {label}"


def test_wall_time_beyond_its_band_is_no_regression_when_the_steps_do_not_differ(result_factory):
    # The projection moved +30% (a drifting host between the timed steps and the rest), the steps did not.
    comparison = compare(timed(result_factory, 13.0), baseline_of(timed(result_factory)), Tolerances())
    [wall] = [c for c in comparison.changes if c.kind == "wall"]
    assert wall.p_value == 1.0 and wall.verdict == "same" and comparison.verdict == "pass"


def test_the_baselines_own_spread_widens_the_wall_band(result_factory):
    old = baseline_of(timed(result_factory, noise=35.0))
    comparison = compare(timed(result_factory, 13.0, step_factor=1.3), old, Tolerances())
    [wall] = [c for c in comparison.changes if c.kind == "wall"]
    assert wall.tolerance_pct == 35.0 and comparison.verdict == "pass"
    assert "noise band 35%, step samples p=" in wall.describe()


@pytest.mark.parametrize("before, now, reason", [
    ([1980, 1980, None], [1830, 1830, 1980], ("GPU SM clock in the traced steps: 1980 -> 1830 MHz (-7.6%, "
                                              "median of the steps' means)")),
    ([1980, 1980], [1975, 1980], None),  # within 1%
    ([], [1830], None),  # a baseline that predates the clock
])
def test_a_moved_gpu_clock_is_named_beside_the_verdict(result_factory, before, now, reason):
    comparison = compare(timed(result_factory, gpu=8.4, kernel_step_sm_mhz=now),
                         baseline_of(timed(result_factory, kernel_step_sm_mhz=before)), Tolerances())
    assert comparison.label == "kernel regression"
    assert comparison.reasons == ([reason] if reason else [])
    assert (reason in comparison.explain("case")) if reason else "SM clock" not in comparison.explain("case")


A, B = "GPU-a", "GPU-b"


@pytest.mark.parametrize("before, now, gpus, gpu, verdict, tolerance", [
    (None, {"power cap": 3}, (A, B), 8.2, "pass", 4.0),  # +2.5% on another GPU: within the clock-limited tolerance
    ({"power cap": 2}, {}, (A, B), 8.3, "pass", 4.0),  # either run limited is enough
    (None, {"power cap": 3}, (None, B), 8.3, "pass", 4.0),  # the baseline's GPU unknown: maybe another
    (None, {"power cap": 3}, (A, B), 8.4, "regression", 4.0),  # +5% still fails
    ({"power cap": 2}, {"power cap": 3}, (A, A), 8.2, "regression", 2.0),  # the same GPU repeats itself
    ({}, {}, (A, B), 8.2, "regression", 2.0),  # read and never limited: the tight tolerance
    (None, None, (A, B), 8.2, "regression", 2.0),  # not recorded on either side
])
def test_gpu_time_of_clock_limited_steps_on_another_gpu_is_judged_at_its_own_tolerance(
        result_factory, before, now, gpus, gpu, verdict, tolerance):
    def measured(uuid, **fields):
        machine = {"gpu": "NVIDIA H200", "gpu_uuid": uuid} if uuid else {"gpu": "NVIDIA H200"}
        return timed(result_factory, kernel_step_tokens=[8192, 4096, 0], machine=machine, **fields)

    comparison = compare(measured(gpus[1], gpu=gpu, kernel_clock_limits=now),
                         baseline_of(measured(gpus[0], kernel_clock_limits=before)), Tolerances())
    [change] = [c for c in comparison.changes if c.kind == "gpu"]
    assert comparison.verdict == verdict and change.tolerance_pct == tolerance
    limited = [r for r in comparison.reasons if "held its clock down" in r]
    assert len(limited) == (tolerance == 4.0)
    if (before, now, gpus) == (None, {"power cap": 3}, (A, B)):
        assert limited[0] == ("the GPU held its clock down in the traced steps (this run: power cap in 3 of 3 steps; "
                              "the baseline: not recorded), on another GPU: such kernel time differs between GPUs "
                              "of one model, so GPU time is judged at the clock-limited tolerance")
    if before == {"power cap": 2} and tolerance == 4.0:
        assert "(this run: none; the baseline: power cap in 2 of 3 steps)" in limited[0]
    if gpus[0] is None:
        assert "the baseline's GPU is not recorded" in limited[0]


def test_gpu_time_is_compared_only_where_both_runs_have_it(result_factory):
    comparison = compare(timed(result_factory, gpu=9.0), baseline_of(timed(result_factory, gpu=None)), Tolerances())
    assert [c.metric for c in comparison.changes][0] == "minutes_per_1000_samples"
    assert comparison.reasons == [
        "the baseline has no GPU kernel time (it predates that metric): speed is judged on wall time alone"]


# --- wall time only within a host ------------------------------------------------------------------------------

@pytest.mark.parametrize("baseline_host, now_host, judged, why", [
    (["GPU-a0", "GPU-a1"], ["GPU-a0", "GPU-a1"], True, None),
    (["GPU-a0", "GPU-a1"], ["GPU-a1"], True, None),  # a container that sees one GPU of the host
    (["GPU-b0", "GPU-b1"], ["GPU-a0", "GPU-a1"], False, "it ran on another host"),
    (None, ["GPU-a0", "GPU-a1"], False, "its host is not recorded"),  # written before results named their host
])
def test_wall_time_is_judged_only_against_a_baseline_of_the_same_host(result_factory, baseline_host, now_host,
                                                                      judged, why):
    old, now = timed(result_factory), timed(result_factory, 14.0, step_factor=1.4)  # a host 40% slower
    old.machine = {**old.machine, "host": baseline_host}
    now.machine = {**now.machine, "host": now_host}
    comparison = compare(now, baseline_of(old), Tolerances())
    assert comparison.wall_across_hosts is not judged
    assert any(c.kind == "wall" for c in comparison.changes) is judged
    assert comparison.label == ("host-side regression" if judged else "pass")
    reasons = [r for r in comparison.reasons if r.startswith("wall time is not judged")]
    expected = (f"wall time is not judged: {why}, and between hosts of one GPU model it moves by up to 46% (a "
                "host-bound step runs as fast as the host's CPUs let it)")
    assert reasons == ([] if judged else [expected])


def test_without_gpu_time_or_a_shared_host_speed_is_not_judged(result_factory):
    old, now = timed(result_factory, gpu=None), timed(result_factory, 14.0, step_factor=1.4)
    now.machine = {**now.machine, "host": ["GPU-elsewhere"]}
    comparison = compare(now, baseline_of(old), Tolerances())
    assert comparison.verdict == "pass" and all(c.kind != "wall" for c in comparison.changes)
    assert "the baseline has no GPU kernel time (it predates that metric): speed is not judged" in comparison.reasons
    now.machine = {**old.machine}
    assert "speed is judged on wall time alone" in compare(now, baseline_of(old), Tolerances()).reasons[0]


# --- kernel families: each against the rest of its step ----------------------------------------------------------

FAMILY_NAMES = ["flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel<128>", "flash_fwd_kernel<128>", "nvjet_tst_a",
                "at::native::vectorized_elementwise_kernel<4, at::native::silu_kernel>", "multi_tensor_apply_kernel<Adam>"]


def with_families(result_factory, bwd=10.0, fwd=5.0, gemm=60.0, elementwise=25.0, scale=1.0, machine=None,
                  operators=None, **fields):
    """A result whose one traced micro-step (2048 tokens, weight 1000) has these milliseconds per family (an
    optimizer step 1 ms, weight 63), all scaled by `scale` as a faster or slower GPU would; GPU-minutes to match."""
    ms = [bwd, fwd, gemm, elementwise]
    step = [[i, 32, round(v * scale * 1e6)] for i, v in enumerate(ms)]
    seconds = 1000 * sum(ms) * scale / 1000 + 63 * 0.001 * scale
    values = {"kernel_names": list(FAMILY_NAMES), "kernel_step_kernels": [step, [[4, 4, round(1e6 * scale)]]],
              "kernel_step_tokens": [2048, 0], "kernel_step_weights": [1000.0, 63.0],
              "kernel_step_operators": operators or [{}, {}],
              "machine": machine or {"gpu": "NVIDIA H200", "gpu_uuid": "GPU-a"}}
    return timed(result_factory, gpu=seconds / 60, **{**values, **fields})


def test_a_family_that_grew_fails_its_row_though_the_step_stayed_within_tolerance(result_factory):
    old = baseline_of(with_families(result_factory))
    comparison = compare(with_families(result_factory, bwd=11.5), old, Tolerances())  # +15% of a tenth: step +1.5%
    [gpu] = [c for c in comparison.changes if c.kind == "gpu"]
    assert gpu.verdict == "same" and comparison.verdict == "regression"
    assert comparison.label == "kernel (attention backward) regression"
    [line] = [line for line in comparison.explain("case").splitlines() if line.startswith("  attention backward")]
    assert line == ("  attention backward +15.0% (+1.5% of the step; +15.0% against the rest of the step, tolerance 2.5%): "
                    "flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel 10 -> 11.5 ms/step")


def test_a_whole_gpu_faster_or_slower_moves_no_family(result_factory):
    old = baseline_of(with_families(result_factory))
    comparison = compare(with_families(result_factory, scale=1.015), old, Tolerances())
    assert comparison.verdict == "pass" and all(f.verdict == "same" for f in comparison.families)
    assert max(abs(f.against_rest_pct) for f in comparison.families) < 1e-6


def test_a_small_family_moves_no_verdict_below_its_share_of_the_step(result_factory):
    # +8% of a family of 1% of the step: beyond the tolerance against the rest, but 0.08% of the step.
    old = baseline_of(with_families(result_factory, fwd=1.0))
    comparison = compare(with_families(result_factory, fwd=1.08), old, Tolerances())
    [fwd] = [f for f in comparison.families if f.family == "attention forward"]
    assert fwd.against_rest_pct > 2.5 and fwd.verdict == "same" and comparison.verdict == "pass"
    comparison = compare(with_families(result_factory, fwd=1.12), old, Tolerances())  # 0.12% of the step: judged
    assert comparison.label == "kernel (attention forward) regression"


def test_families_are_not_judged_against_a_baseline_without_them(result_factory):
    comparison = compare(with_families(result_factory, bwd=13.0), baseline_of(timed(result_factory)), Tolerances())
    assert comparison.families == [] and ("the baseline has no kernel families (written before sftbench recorded "
                                          "them): GPU time is judged on the step total") in comparison.reasons


def test_families_are_judged_across_gpus_whose_clocks_the_power_cap_held(result_factory):
    # Against the rest of the step a power-capped GPU's own pace cancels: families are judged as on one GPU.
    capped = with_families(result_factory, scale=1.03, machine={"gpu": "NVIDIA H200", "gpu_uuid": "GPU-b"},
                           kernel_clock_limits={"power cap": 1})
    comparison = compare(capped, baseline_of(with_families(result_factory, kernel_clock_limits={"power cap": 1})),
                         Tolerances())
    assert comparison.verdict == "pass" and comparison.families and all(f.verdict == "same" for f in comparison.families)


def test_operator_and_api_count_changes_are_named_beside_a_passing_verdict(result_factory):
    before = [{"flash_attn::_flash_attn_forward": 64, "aten::mm": 400}, {}]
    now = [{"aten::mm": 400, "aten::empty_like": 64}, {}]
    comparison = compare(with_families(result_factory, operators=now, kernel_step_api_calls=[{"cudaLaunchKernel": 10}, {}]),
                         baseline_of(with_families(result_factory, operators=before,
                                                   kernel_step_api_calls=[{"cudaLaunchKernel": 12}, {}])), Tolerances())
    assert comparison.verdict == "pass"
    assert ("torch operators per micro-step (2048 tokens): +64 aten::empty_like, -64 flash_attn::_flash_attn_forward"
            in comparison.reasons)
    assert "CUDA API calls per micro-step (2048 tokens): -2 cudaLaunchKernel" in comparison.reasons


def test_a_baseline_with_a_broken_kernel_table_is_unusable(store, result_factory):
    from sftbench.baselines import unusable_metrics

    good = with_families(result_factory)
    assert unusable_metrics(good) == []
    broken = with_families(result_factory)
    broken.kernel_step_kernels[0][0] = [99, 1, 5]
    assert unusable_metrics(broken) == ["kernel_step_kernels[0] has [99, 1, 5], not [name index, count, nanoseconds]"]
    broken = with_families(result_factory, kernel_step_weights=[1000.0])
    assert unusable_metrics(broken) == ["2 traced steps but 2 kernel tables and 1 weights"]
