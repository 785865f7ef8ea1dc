"""BenchSession.check on recorded results (no case runs)."""

import pytest

from sftbench.catalog import Row
from sftbench.session import BenchSession, SessionOptions
from sftbench.spec import CaseSpec

ROW = Row(table="lora_max_length", id="qwen-7b-chat-4096", spec=CaseSpec("qwen-7b-chat", max_length=4096))


class FakeBenchmark:
    def __init__(self):
        self.extra_info, self.rounds = {}, None

    def pedantic(self, target, rounds, iterations):
        self.rounds = rounds


@pytest.fixture
def session(tmp_path, monkeypatch):
    session = BenchSession(SessionOptions(baselines_dir=tmp_path, results_dir=None, update_baselines=True),
                           write_line=lambda line: None)
    monkeypatch.setattr(session, "skip_reason", lambda spec: None)  # as on a GPU machine with flash-attn
    return session


def test_a_fallback_kernels_numbers_never_become_the_rows_baseline(session, result_factory, tmp_path):
    session.results[ROW.spec] = result_factory(attention="sdpa")  # ran with --sftbench-attn-fallback sdpa
    with pytest.raises(pytest.fail.Exception, match="ran sdpa .* for a row measured with flash_attention_2"):
        session.check(ROW, FakeBenchmark())
    assert not list(tmp_path.rglob("*.json"))


def test_update_writes_the_rows_baseline_and_feeds_its_steps_to_pytest_benchmark(session, result_factory, tmp_path):
    session.results[ROW.spec] = result_factory()
    benchmark = FakeBenchmark()
    session.check(ROW, benchmark)
    assert [p.name for p in tmp_path.rglob("*.json")] == [f"{ROW.spec.key}.json"]
    assert benchmark.rounds == 3 and benchmark.extra_info["max_reserved_mib"] == 1000.0
