"""sftbench.diagnostics.frontier and `python -m sftbench frontier`: the longest max_length that fits a card."""

import json

import pytest

from sftbench import environment
from sftbench.__main__ import main
from sftbench.catalog import rows_by_id
from sftbench.diagnostics.frontier import FrontierError, find_frontier, write_frontier

[ROW] = rows_by_id(["test_full_max_length[qwen-7b-chat-2048]"])


def runner(result_factory, need_mib, oom_from=None, error_at=None):
    """A run(spec) whose card need is need_mib(max_length), OOM from `oom_from` tokens on; the lengths it ran."""
    ran = []

    def run(spec):
        length = spec.max_length
        ran.append(length)
        if length == error_at:
            return result_factory(spec, outcome="error", message="ImportError: no flash_attn\ntraceback")
        result = result_factory(spec, outcome="oom" if oom_from and length >= oom_from else "ok")
        result.memory.max_allocated_mib, result.memory.max_reserved_mib = need_mib(length) - 500, need_mib(length)
        result.memory.nvml_peak_mib = need_mib(length) + 500  # 500 MiB outside PyTorch's allocator
        return result

    return run, ran


def test_the_search_tries_the_seeds_lengths_then_halves_the_gap_to_512_tokens(result_factory):
    run, ran = runner(result_factory, lambda length: 40000 + 5 * length)  # card need 40000 + 5/token MiB
    frontier, trials = find_frontier(ROW, 81559, run, log=lambda line: None)
    assert frontier == 8192  # 81000 MiB fits; 10240 tokens would need 91200
    assert ran == [512, 1024, 2048, 4096, 8192, 16384, 12288, 10240, 9216, 8704]
    assert [t.fits for t in trials] == [True] * 5 + [False] * 5
    assert trials[4].card_need_mib == 40000 + 5 * 8192 and trials[4].max_reserved_mib == 40000 + 5 * 8192


def test_an_oom_does_not_fit_and_nothing_fitting_is_none(result_factory, tmp_path):
    run, ran = runner(result_factory, lambda length: 1000.0, oom_from=3000)
    assert find_frontier(ROW, 81559, run, log=lambda line: None)[0] == 2560
    run, ran = runner(result_factory, lambda length: 90000.0)
    frontier, trials = find_frontier(ROW, 81559, run, log=lambda line: None)
    assert (frontier, ran) == (None, [512])
    path = write_frontier(tmp_path, ROW, 81559, frontier, trials)
    assert json.loads(path.read_text())["trials"][0] == {"max_length": 512, "outcome": "ok", "card_need_mib": 90000.0,
                                                          "max_reserved_mib": 90000.0, "fits": False}


def test_a_length_that_cannot_run_stops_the_search_in_one_line(result_factory):
    run, _ = runner(result_factory, lambda length: 1000.0, error_at=4096)
    with pytest.raises(FrontierError, match=r"^test_full_max_length\[qwen-7b-chat-2048\] at max_length 4096 could "
                                            r"not run: ImportError: no flash_attn$"):
        find_frontier(ROW, 81559, run, log=lambda line: None)


def test_the_command_needs_a_gpu(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(environment, "gpu_info", lambda: {"gpu": "cpu", "gpu_memory_mib": None})
    assert main(["frontier", "test_cpu_smoke[tiny-qwen-lora-sdpa]", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == ("sftbench: frontier: no CUDA GPU here: what a case needs of a card is measured "
                                       "on one\n")
