"""pytest-xdist (`pytest tests/benchmarks -n N`): a GPU of its own for each worker, and a configuration's
rows in one worker.

Worker gwK measures on the K-th GPU the controller sees (its CUDA_VISIBLE_DEVICES list, else every GPU
NVML counts); it sets its CUDA_VISIBLE_DEVICES to that GPU alone before anything reads the GPU or starts
the case launcher, so its cases and its forkserver see only that GPU. It also keeps to the K-th share of
the CPU cores: a 7B LoRA step is mostly Python and kernel launches, and unpinned on a 4-GPU H200 host the
same 512-token step took 0.16-0.27 s depending on what the other workers did (docs/measurements.md).
Without a GPU nothing is pinned.
The workers take whole configurations (`--dist loadgroup` by default, each row in its configuration's
xdist_group), so a configuration in several tables still trains once.
"""

from __future__ import annotations

import os

import pytest

LOADGROUP_INPUT = "sftbench_loadgroup"  # workerinput key: the controller distributes by xdist_group
WORKER_ENV = "PYTEST_XDIST_WORKER"  # gwK, set by pytest-xdist in each worker before its plugins configure
WORKER_COUNT_ENV = "PYTEST_XDIST_WORKER_COUNT"


def visible_gpus(environ=os.environ) -> list[str]:
    """The GPUs this process may use: CUDA_VISIBLE_DEVICES's entries, else NVML's device indices; [] without."""
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [gpu.strip() for gpu in visible.split(",") if gpu.strip()]
    try:
        import pynvml

        pynvml.nvmlInit()
        return [str(index) for index in range(pynvml.nvmlDeviceGetCount())]
    except Exception:  # noqa: BLE001 - no nvidia-ml-py, no driver or no GPU: nothing to pin
        return []


def check_worker_count(workers: int, environ=os.environ) -> None:
    """On the controller: refuse more workers than GPUs, where there are GPUs (on the CPU any count runs)."""
    gpus = visible_gpus(environ)
    if gpus and workers > len(gpus):
        raise pytest.UsageError(f"-n {workers}: this host has {len(gpus)} GPU(s) ({','.join(gpus)}) and each "
                                f"pytest-xdist worker measures on a GPU of its own; use -n {len(gpus)} or fewer")


def pin_worker(environ=os.environ) -> str | None:
    """On worker gwK: make the K-th visible GPU its only one, and keep to its share of the CPU cores; return
    the GPU (None outside a worker or without GPUs)."""
    worker = environ.get(WORKER_ENV)
    if worker is None:
        return None
    gpus = visible_gpus(environ)
    if not gpus:
        return None
    index = int(worker.removeprefix("gw"))
    if index >= len(gpus):
        raise pytest.UsageError(f"pytest-xdist worker {worker} has no GPU of its own: {len(gpus)} visible "
                                f"({','.join(gpus)})")
    environ["CUDA_VISIBLE_DEVICES"] = gpus[index]
    cores = sorted(os.sched_getaffinity(0))
    share = len(cores) // int(environ.get(WORKER_COUNT_ENV, len(gpus)))
    if share:  # inherited by the forkserver and the cases, which start later
        os.sched_setaffinity(0, cores[index * share:(index + 1) * share])
    return gpus[index]


def default_to_loadgroup(option) -> None:
    """Under -n, distribute by xdist_group unless the user chose a --dist mode (before pytest-xdist's own
    default, "load", is applied)."""
    if getattr(option, "numprocesses", None) and getattr(option, "dist", "no") == "no":
        option.dist = "loadgroup"


def pass_loadgroup(config, workerinput: dict) -> None:
    """Tell a worker that the controller distributes by group: a worker parses the command line again, so
    a --dist that default_to_loadgroup set rather than the user does not reach it, and without it the worker
    leaves its rows' node ids without the group that the controller's scheduler reads."""
    workerinput[LOADGROUP_INPUT] = config.getvalue("dist") == "loadgroup"


def take_loadgroup(config) -> None:
    """In a worker, before collection: group as the controller does (pytest-xdist's own flag)."""
    if config.workerinput.get(LOADGROUP_INPUT):
        config.option.loadgroup = True


def keep_groups_in_node_ids(items) -> None:
    """In a loadgroup worker, after pytest-xdist's collection hook: every grouped item's node id ends in
    @<group>, which the controller's scheduler reads to keep a group in one worker.

    pytest-xdist writes that suffix to the legacy `_nodeid` attribute, which pytest 9.2's structured node ids
    no longer read (pytest-dev/pytest-xdist#1386): the rows would silently be spread over the workers and a
    configuration shown in several tables trained on several. Where the suffix is missing it is set through
    the structured id; where that fails too, the run stops with one line instead of measuring twice."""
    for item in items:
        groups = sorted({str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
                         for mark in item.iter_markers("xdist_group")})
        suffix = f"@{'_'.join(groups)}"
        if not groups or item.nodeid.endswith(suffix):
            continue
        try:
            from _pytest.nodeid import coerce_node_id

            item._id = coerce_node_id(item.nodeid + suffix)
        except ImportError:
            pass
        if not item.nodeid.endswith(suffix):
            raise pytest.UsageError(f"pytest-xdist cannot group {item.nodeid} with this pytest (pytest-xdist#1386): "
                                    "its configuration could train in several workers; run without -n, or with "
                                    "the pytest of constraints.txt")
