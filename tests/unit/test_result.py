"""sftbench.result: a Result round-trips through JSON and refuses what it does not know."""

import json

import pytest

from sftbench.result import Result
from sftbench.spec import CaseSpec
from sftbench.result import MemoryPeaks

SPEC = CaseSpec("tiny-qwen", device="cpu", attention="sdpa", max_length=128, samples=20)


def test_a_result_round_trips_through_json(result_factory):
    result = result_factory(versions={"torch": "2.13.0", "flash-attn": None})
    text = result.to_json()
    json.loads(text)  # plain JSON
    again = Result.from_json(text)
    assert again == result
    assert isinstance(again.memory, MemoryPeaks)
    assert again.memory.max_reserved_mib == 1000.0
    assert again.memory.max_rss_mib == 4000.0 and again.step_tokens == [4096, 2048, 512]
    assert again.versions["flash-attn"] is None


def test_an_oom_result_round_trips_with_its_message():
    result = Result(case=SPEC.to_dict(), key=SPEC.key, outcome="oom", message="CUDA out of memory.",
                    memory=MemoryPeaks(max_reserved_mib=80000.0))
    again = Result.from_dict(json.loads(result.to_json()))
    assert again == result
    assert again.outcome == "oom" and again.minutes_per_1000_samples is None


def test_a_minimal_result_gets_the_defaults():
    again = Result.from_dict({"case": SPEC.to_dict(), "key": SPEC.key})
    assert again.outcome == "ok" and again.mode == "quick"
    assert again.memory == MemoryPeaks()
    assert again.step_durations_s == [] and again.model_shape == {}  # written before the field existed


def test_unknown_fields_are_refused(result_factory):
    data = result_factory().to_dict()
    data["tokens_per_second"] = 1.0
    data["gpu"] = "H100"
    with pytest.raises(ValueError, match="unknown result fields: gpu, tokens_per_second"):
        Result.from_dict(data)


def test_missing_fields_are_named():
    with pytest.raises(ValueError, match="^missing result fields: case, key$"):
        Result.from_dict({"outcome": "ok"})


@pytest.mark.parametrize("outcome", ["OOM", "crashed", None])
def test_a_bad_outcome_is_refused(result_factory, outcome):
    data = result_factory().to_dict()
    data["outcome"] = outcome
    with pytest.raises(ValueError, match="outcome must be one of"):
        Result.from_json(json.dumps(data))
