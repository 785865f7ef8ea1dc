"""sftbench.xdist_workers: each pytest-xdist worker on a GPU and a share of the CPU cores of its own (no worker starts)."""

import os

import pytest

from sftbench import xdist_workers


@pytest.fixture
def affinity(monkeypatch):
    """The cores a pin asks for, on a host of 16 cores; no real pinning."""
    asked = []
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.setattr(os, "sched_setaffinity", lambda pid, cores: asked.append(sorted(cores)))
    return asked


@pytest.mark.parametrize("visible, expected", [("0,1,2,3", ["0", "1", "2", "3"]), ("2, 3", ["2", "3"]), ("", []),
                                               ("GPU-aa,GPU-bb", ["GPU-aa", "GPU-bb"])])
def test_visible_gpus_are_cuda_visible_devices_entries(visible, expected):
    assert xdist_workers.visible_gpus({"CUDA_VISIBLE_DEVICES": visible}) == expected


def test_worker_k_takes_the_kth_visible_gpu_and_its_share_of_the_cores(affinity):
    environ = {"CUDA_VISIBLE_DEVICES": "4,5,6,7", "PYTEST_XDIST_WORKER": "gw2", "PYTEST_XDIST_WORKER_COUNT": "4"}
    assert xdist_workers.pin_worker(environ) == "6"
    assert environ["CUDA_VISIBLE_DEVICES"] == "6" and affinity == [[8, 9, 10, 11]]


@pytest.mark.parametrize("environ", [{"CUDA_VISIBLE_DEVICES": "0,1"},  # not a worker
                                     {"CUDA_VISIBLE_DEVICES": "", "PYTEST_XDIST_WORKER": "gw1"}])  # no GPU
def test_nothing_is_pinned_outside_a_worker_or_without_a_gpu(environ, affinity):
    before = dict(environ)
    assert xdist_workers.pin_worker(environ) is None and environ == before and not affinity


def test_more_workers_than_gpus_is_a_usage_error():
    xdist_workers.check_worker_count(2, {"CUDA_VISIBLE_DEVICES": "0,1"})
    xdist_workers.check_worker_count(8, {"CUDA_VISIBLE_DEVICES": ""})  # on the CPU any count runs
    with pytest.raises(pytest.UsageError, match=r"-n 3: this host has 2 GPU\(s\) \(0,1\) .* use -n 2 or fewer"):
        xdist_workers.check_worker_count(3, {"CUDA_VISIBLE_DEVICES": "0,1"})


@pytest.mark.parametrize("visible, workers_asked", [("0,1", 2), ("3", 1), ("", None)])
def test_n_auto_asks_for_a_worker_per_visible_gpu_and_leaves_a_host_without_gpus_to_pytest_xdist(
        monkeypatch, visible, workers_asked):
    from sftbench.plugin import pytest_xdist_auto_num_workers

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert pytest_xdist_auto_num_workers(config=None) == workers_asked


class _Item:
    """A collected item whose node id cannot take pytest-xdist's group suffix."""

    nodeid = "test_x.py::test_row[a]"

    def __init__(self, group):
        self.group = group

    def iter_markers(self, name):
        return [pytest.mark.xdist_group(self.group).mark] if self.group else []


def test_a_group_that_cannot_reach_the_node_id_stops_the_run_with_one_line():
    xdist_workers.keep_groups_in_node_ids([_Item(None)])  # an item without a group is left alone
    with pytest.raises(pytest.UsageError, match=r"pytest-xdist cannot group test_x.py::test_row\[a\] with this pytest"):
        xdist_workers.keep_groups_in_node_ids([_Item("key")])
