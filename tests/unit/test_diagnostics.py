"""sftbench.diagnostics: a CPU profile run, the memory-diagnostic format the report reads, and the commands'
handling of an unknown row."""

import contextlib
import json
import subprocess
import sys
from types import SimpleNamespace

import pytest

from sftbench.diagnostics import memory_at_peak, step_profile


def test_a_cpu_profile_writes_its_report_and_an_unknown_row_is_one_clear_error(tmp_path):
    row = "test_cpu_smoke[tiny-qwen-lora-sdpa]"
    run = subprocess.run([sys.executable, "-m", "sftbench", "profile", row, "--steps", "2", "--blocks", "1",
                          "--clock", "2", "--out", str(tmp_path)], capture_output=True, text=True, check=True)
    key = "tiny-qwen.lora.bf16.len512.bs1.gc.sdpa.r8-DEFAULT.cpu"
    report = json.loads((tmp_path / f"{key}.json").read_text())
    assert report["key"] == key and report["launch_floor_us"] > 0 and report["profile"]["cpu_ops"] > 0
    assert report["clock"] == {"skipped": "no GPU kernel clock on the CPU"}
    assert len(report["nvml_ab"]["off"]) == len(report["nvml_ab"]["on"]) == 1
    assert (tmp_path / f"{key}.profile.txt").stat().st_size > 0 and run.returncode == 0
    bad = subprocess.run([sys.executable, "-m", "sftbench", "profile", "test_x[nope]", "--out", str(tmp_path)],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "no catalog row 'test_x[nope]'" in bad.stderr and "Traceback" not in bad.stderr


def test_projection_names_an_unknown_row(tmp_path):
    bad = subprocess.run([sys.executable, "-m", "sftbench", "projection", "test_x[nope]", "--out", str(tmp_path)],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "no catalog row 'test_x[nope]'" in bad.stderr and "Traceback" not in bad.stderr


def test_memory_at_peak_reads_the_profiles_that_have_one(tmp_path):
    peak = {"batch_tokens": 8192, "allocated_before_mib": 100, "groups_mib": [["`x`", 5, 1]]}
    (tmp_path / "a.json").write_text(json.dumps({"key": "a", "memory_at_peak": peak}))
    (tmp_path / "b.json").write_text(json.dumps({"key": "b", "launch_floor_us": 7.0}))
    assert memory_at_peak(tmp_path) == {"a": peak}


def test_the_gpu_projection_is_replayed_on_the_reference_runs_own_steps(result_factory):
    from sftbench.data import SyntheticCorpus, epoch_batches
    from sftbench.diagnostics.projection import markdown_table, replay_quick_gpu
    from sftbench.result import Kernels, TracedStep
    from sftbench.spec import CaseSpec

    spec = CaseSpec("qwen-7b-chat", max_length=8192, samples=40)
    epoch = [b.tokens for b in epoch_batches(SyntheticCorpus(1, 40).lengths, 1, 8192)]
    shapes = sorted(set(epoch))  # every batch shape traced once, then one optimizer step (0 tokens)

    def reference(kernel_s):
        steps = [TracedStep(tokens=t, seconds=kernel_s(t), weight=1.0) for t in shapes] + \
            [TracedStep(tokens=0, seconds=0.5, weight=3.0)]
        return result_factory(spec, kernels=Kernels(steps=steps, optimizer_s=0.5), epoch_optimizer_steps=3)

    def minutes(kernel_s):
        return (sum(kernel_s(t) for t in epoch) + 3 * 0.5) / 60 * 1000 / 40

    curved = reference(lambda t: t**2 * 1e-7)
    # Replaying every batch is the epoch itself; a few representatives interpolate a convex curve from above.
    assert replay_quick_gpu(curved, spec, len(epoch)) == pytest.approx(minutes(lambda t: t**2 * 1e-7))
    assert replay_quick_gpu(curved, spec, 3) > minutes(lambda t: t**2 * 1e-7) * 1.001
    # Kernel time linear in tokens: three representatives project it exactly, also where the reference traced
    # every other shape (with the shortest and the longest, as representatives always include them).
    linear = reference(lambda t: 1e-4 * t + 0.01)
    assert replay_quick_gpu(linear, spec, 3) == pytest.approx(minutes(lambda t: 1e-4 * t + 0.01))
    kept = sorted(set(range(0, len(shapes), 2)) | {len(shapes) - 1, len(shapes)})
    linear.kernels.steps = [linear.kernels.steps[i] for i in kept]
    assert replay_quick_gpu(linear, spec, 3) == pytest.approx(minutes(lambda t: 1e-4 * t + 0.01))
    row = {"row": "r", "reference": "400 micro-steps traced", "settle": 4, "steps": 32, "quick_min": 4.0,
           "full_min": None, "delta_pct": None, "replayed_min": None, "quick_gpu_min": 1.01, "full_gpu_min": 1.0,
           "gpu_delta_pct": 1.0, "replayed_gpu_min": 1.0}
    assert markdown_table([row]).splitlines()[-1] == (
        "| r | 400 micro-steps traced | 4 | 32 | 4.000 |  |  |  | 1.010 | 1.000 | +1.0% | 1.000 (+0.0%) |")

class FakeKernelTimer:
    """KernelTimer as the profile diagnostics use it: each traced step records tokens * 1e-4 kernel seconds, three
    kernels, a falling clock (and the power cap above 4096 tokens), and what it counted (operators, API calls)."""

    def __init__(self, device):
        from sftbench.result import Kernels

        self.record, self.step_limits, self.collects, self.counted = Kernels(), [], 0, []

    def start(self):
        pass

    @contextlib.contextmanager
    def step(self, tokens, count_operators=True, count_api_calls=True):
        from sftbench.result import TracedStep

        yield
        self.record.steps.append(TracedStep(tokens=tokens, seconds=tokens * 1e-4, kernels=[[0, 3, 1]],
                                            sm_mhz=1980 - len(self.record.steps) - 1))
        self.step_limits.append(0x4 if tokens > 4096 else 0)
        self.counted.append((count_operators, count_api_calls))

    def collect(self):
        self.collects += 1

    def stop(self):
        return self.record


def test_kernel_time_and_clock_traces_each_batch_in_turn_and_reads_the_records_between_repeats(monkeypatch):
    monkeypatch.setattr(step_profile, "KernelTimer", FakeKernelTimer)
    ran = []
    trainer = SimpleNamespace(device="cuda", micro_step=ran.append)
    long, middle = SimpleNamespace(tokens=8192), SimpleNamespace(tokens=2048)
    traced = step_profile.kernel_time_and_clock(trainer, [long, middle], 3)
    assert ran == [long, middle] * 3 and traced["tokens"] == [8192, 2048] * 3
    assert traced["sm_mhz"] == [1979, 1978, 1977, 1976, 1975, 1974] and traced["kernels"] == [3] * 6
    assert traced["clock_limits"] == [["power cap"], []] * 3


def test_tracing_cost_runs_each_batch_untraced_traced_and_counted_in_turn(monkeypatch):
    timers = []

    def made(device):
        timers.append(FakeKernelTimer(device))
        return timers[-1]

    monkeypatch.setattr(step_profile, "KernelTimer", made)
    monkeypatch.setattr(step_profile, "synchronize", lambda device: None)
    ran = []
    trainer = SimpleNamespace(device="cuda", micro_step=ran.append)
    long, middle = SimpleNamespace(tokens=8192), SimpleNamespace(tokens=2048)
    report = step_profile.tracing_cost(trainer, [long, middle], 2)
    assert ran == ([long] * 4 + [middle] * 4) * 2
    assert timers[0].counted == [(False, False), (True, False), (True, True)] * 4 and timers[0].collects == 2
    assert sorted(report) == ["2048", "8192"] and sorted(report["8192"]) == sorted(step_profile.TRACING)
    assert len(report["8192"]["untraced"]["wall_s"]) == 2 and "kernel_s" not in report["8192"]["untraced"]
    assert report["8192"]["kernel activity"]["kernel_s"] == pytest.approx([0.8192] * 2)
    assert report["2048"]["operators and API calls counted"]["kernel_s"] == pytest.approx([0.2048] * 2)
    assert all(w >= 0 for way in report["2048"].values() for w in way["wall_s"])


@pytest.mark.parametrize("reference_ok, name", [(True, "3 micro-steps traced"), (False, "no micro-steps traced")])
def test_a_projection_against_a_quick_run_of_every_batch_names_its_reference_and_leaves_the_wall_columns_empty(
        tmp_path, monkeypatch, result_factory, reference_ok, name):
    from sftbench.catalog import Row
    from sftbench.diagnostics import projection
    from sftbench.result import TracedStep
    from sftbench.spec import CaseSpec, RunOptions

    spec = CaseSpec("qwen-7b-chat", max_length=8192, samples=40)
    ran = []

    class Launcher:
        def run(self, spec, options):
            ran.append(options)
            if options.representative_steps == 40:  # the reference: every batch timed and traced
                steps = [TracedStep(tokens=t, seconds=s, weight=1.0) for t, s in zip([8192, 4096, 512, 0],
                                                                                     [1.0, 0.5, 0.1, 0.2])]
                return result_factory(spec, outcome="ok" if reference_ok else "oom", steps=steps, optimizer_s=0.2,
                                      gpu_minutes_per_1000_samples=2.0, busy_pct=20.0, step_tokens=[8192, 4096, 512])
            return result_factory(spec, gpu_minutes_per_1000_samples=2.02, busy_pct=20.2)

    monkeypatch.setattr(projection, "Launcher", Launcher)
    [entry] = projection.check_projection([Row("lora_max_length", "x", spec)], tmp_path, quick_runs=1,
                                          reference_steps=40, log=lambda line: None)
    assert [o.representative_steps for o in ran] == [RunOptions().representative_steps, 40] and not ran[1].full_epoch
    assert entry["reference"] == name and entry["full_min"] is None and entry["replayed_min"] is None
    assert (entry["full_gpu_min"], entry["gpu_delta_pct"]) == ((2.0, pytest.approx(1.0)) if reference_ok else (None, None))


def test_a_full_epoch_is_replayed_with_the_quick_settings_representatives_not_its_timed_steps(
        tmp_path, monkeypatch, result_factory):
    from sftbench import trainer
    from sftbench.catalog import Row
    from sftbench.data import SyntheticCorpus, epoch_batches
    from sftbench.diagnostics import projection
    from sftbench.result import minutes_per_1000_samples
    from sftbench.spec import CaseSpec

    spec = CaseSpec("qwen-7b-chat", max_length=2048, samples=40)
    batches = epoch_batches(SyntheticCorpus(1, 40).lengths, 1, 2048)
    tokens, real_tokens = [b.tokens for b in batches], [b.real_tokens for b in batches]
    durations = [1e-8 * t * t + 0.01 * (i % 3) for i, t in enumerate(tokens)]  # curved and jittered: counts differ

    class Launcher:
        def run(self, spec, options):
            if options.full_epoch:
                return result_factory(spec, mode="full", step_tokens=tokens, step_durations_s=durations,
                                      epoch_optimizer_steps=3, optimizer_step_s=0.01)
            timed = options.representative_steps + 2 * trainer.FAMILY_REPEATS  # as the quick mode times them
            return result_factory(spec, step_tokens=tokens[:timed], step_durations_s=durations[:timed])

    monkeypatch.setattr(projection, "Launcher", Launcher)
    [entry] = projection.check_projection([Row("lora_max_length", "x", spec)], tmp_path, quick_runs=1, steps=[6],
                                          log=lambda line: None)
    assert entry["steps"] == 6 + 2 * trainer.FAMILY_REPEATS
    replayed = [minutes_per_1000_samples(trainer.replay_quick(tokens, real_tokens, durations, 3, 0.01, n), 40)
                for n in (6, 6 + 2 * trainer.FAMILY_REPEATS)]
    assert replayed[0] != pytest.approx(replayed[1])
    assert entry["replayed_min"] == pytest.approx(replayed[0])
