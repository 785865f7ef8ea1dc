"""BenchSession: the runner's outcomes as pytest results and pytest-benchmark rounds (no case runs)."""

import pytest

from sftbench.catalog import Row
from sftbench.runner import RunConfig
from sftbench.session import BenchSession, ReplayClock, per_step_estimates
from sftbench.spec import CaseSpec

ROW = Row(table="lora_max_length", id="qwen-7b-chat-4096", spec=CaseSpec("qwen-7b-chat", max_length=4096))


class FakeBenchmark:
    def __init__(self):
        self.extra_info, self.rounds = {}, None

    def pedantic(self, target, rounds, iterations):
        self.rounds = rounds


@pytest.fixture
def session(tmp_path, monkeypatch):
    session = BenchSession(RunConfig(baselines_dir=tmp_path, results_dir=None, update_baselines=True),
                           write_line=lambda line: None)
    monkeypatch.setattr(session.runner, "skip_reason", lambda spec: None)  # as on a GPU machine with flash-attn
    return session


def test_a_refused_update_fails_the_test(session, result_factory):
    session.runner.results[ROW.spec] = result_factory(attention="sdpa")  # ran with --sftbench-attn-fallback sdpa
    with pytest.raises(pytest.fail.Exception, match="ran sdpa .* for a row measured with flash_attention_2"):
        session.check(ROW, FakeBenchmark())


def test_update_writes_the_rows_baseline_and_feeds_its_steps_to_pytest_benchmark(session, result_factory, tmp_path):
    session.runner.results[ROW.spec] = result_factory(gpu_minutes_per_1000_samples=8.0, busy_pct=80.0,
                                                      gpu_minutes_by_family={"GEMM": 5.0, "other": 3.0})
    benchmark = FakeBenchmark()
    session.check(ROW, benchmark)
    assert [p.name for p in tmp_path.rglob("*.json")] == [f"{ROW.spec.key}.json"]
    assert benchmark.rounds == 3
    # What sftbench judges beside the wall time that pytest-benchmark compares:
    assert {name: benchmark.extra_info[name] for name in ("gpu_minutes_per_1000_samples", "gpu_busy_pct",
                                                          "max_reserved_mib", "max_allocated_mib")} == {
        "gpu_minutes_per_1000_samples": 8.0, "gpu_busy_pct": 80.0, "max_reserved_mib": 1000.0, "max_allocated_mib": 900.0}
    assert benchmark.extra_info["gpu_minutes_by_family"] == {"GEMM": 5.0, "other": 3.0}


def test_a_skipped_row_is_a_pytest_skip(session, monkeypatch):
    monkeypatch.setattr(session.runner, "skip_reason", lambda spec: "no CUDA GPU here")
    with pytest.raises(pytest.skip.Exception, match="no CUDA GPU here"):
        session.check(ROW, FakeBenchmark())


def test_the_replay_clock_gives_each_round_one_measured_step():
    clock = ReplayClock()
    clock.load([0.5, 0.25])
    assert [clock() for _ in range(4)] == [0.0, 0.5, 0.5, 0.75]


def test_rounds_are_per_step_estimates_of_seconds_per_1000_samples(result_factory):
    tokens = [4096, 3072, 2048, 1024, 512]
    on_trend = [0.05 + 1e-4 * t + 1e-9 * t * t for t in tokens]  # different batch sizes, no noise
    result = result_factory(step_tokens=tokens, step_durations_s=on_trend, minutes=10.0)
    assert per_step_estimates(result) == pytest.approx([600.0] * 5)  # 10 min/1000 samples, whatever the batch
    noisy = result_factory(step_tokens=tokens, step_durations_s=[d * f for d, f in zip(on_trend, [1.1, 0.9, 1, 1.1, 0.9])])
    rounds = per_step_estimates(noisy)
    # The steps themselves span 4.7x; the estimates only about the +-10% noise.
    assert min(rounds) < 600 < max(rounds) and max(rounds) / min(rounds) < 1.5
