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


# --- the frontier page: `python -m sftbench frontiers` -----------------------------------------------------------


def searched(tmp_path, result_factory, node_id, need_mib, oom_from=None):
    """The --out folder of a search of the row whose card need is need_mib(max_length)."""
    [row] = rows_by_id([node_id])
    run, _ = runner(result_factory, need_mib, oom_from)
    frontier, trials = find_frontier(row, 81559, run, log=lambda line: None)
    out = tmp_path / row.table / row.id
    out.mkdir(parents=True)
    write_frontier(out, row, 81559, frontier, trials)
    return out


def test_the_page_sets_each_frontier_beside_the_seeds_last_length_that_ran(tmp_path, result_factory):
    from sftbench.report.frontier import read_frontier, seed_lengths

    full_7b = searched(tmp_path, result_factory, ROW.node_id, lambda length: 40000 + 5 * length)
    full_14b = searched(tmp_path, result_factory, "test_full_max_length[qwen-14b-chat-512]", lambda n: 81000, 512)
    plot = tmp_path / "docs" / "frontier.png"
    assert main(["frontiers", str(full_7b), str(full_14b), "--out", str(tmp_path / "docs" / "frontier.md"),
                 "--plot", str(plot)]) == 0
    page = (tmp_path / "docs" / "frontier.md").read_text()
    assert ("| `test_full_max_length[qwen-7b-chat-2048]` | 8192 | 80960 | 8704: needs 83520 MiB | 4096 | 8192 |"
            in page)
    assert "| `test_full_max_length[qwen-14b-chat-512]` | nothing |  | 512: out of memory | none | 512 |" in page
    assert "![card need by max_length](frontier.png)" in page and plot.read_bytes()[:4] == b"\x89PNG"
    assert seed_lengths(read_frontier(full_7b).row) == (4096, 8192)


def test_the_plot_labels_the_seeds_lengths_and_only_ticks_those_between(tmp_path, result_factory):
    from sftbench.diagnostics.frontier import LENGTHS
    from sftbench.report.frontier import frontier_plot, read_frontier

    full_7b = searched(tmp_path, result_factory, ROW.node_id, lambda length: 40000 + 5 * length)
    axes = frontier_plot([read_frontier(full_7b)], tmp_path / "frontier.png").axes[0]
    assert [label.get_text() for label in axes.get_xticklabels()] == [str(n) for n in LENGTHS]
    tried_between = [t["max_length"] for t in read_frontier(full_7b).trials if t["max_length"] not in LENGTHS]
    assert tried_between and sorted(axes.get_xticks(minor=True)) == sorted(tried_between)
    assert not any(label.get_visible() and label.get_text() for label in axes.get_xticklabels(minor=True))


def test_a_folder_without_a_readable_frontier_is_one_line(tmp_path, capsys):
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "frontier.json").write_text("{")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "frontier.json").write_text(json.dumps({"row": "test_x[y]", "card_mib": 1, "frontier": None,
                                                                     "trials": []}))
    for folder, said in (("empty", "no frontier.json (the --out folder of `python -m sftbench frontier`)"),
                         ("corrupt", "not a frontier of the seed's rows"), ("foreign", "no catalog row 'test_x[y]'")):
        (tmp_path / folder).mkdir(exist_ok=True)
        assert main(["frontiers", str(tmp_path / folder)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("sftbench: frontiers: ") and said in err and len(err.splitlines()) == 1
