"""Where the memory goes at the peak: the bytes alive at the allocated peak, by what holds them.

After the timed and traced steps, the case runs the longest batch once more with gradients present, then an
optimizer step (the epoch's worst memory state, as the warm-up did), with the CUDA caching allocator recording
every allocation, with the Python line that made it, and every free. Replaying that record finds the moment of
the highest allocated bytes and the blocks alive then. Each is put in one category by its address: a tensor the
training holds from before (trainable or frozen parameters, quantized weights' scales and buffers among the
frozen, gradients, optimizer states), or else activations and temporaries, grouped by where they were allocated.
The categories add up to the allocated bytes at that moment exactly: every block is in one. Slack is reserved
minus allocated then (where the allocator reserves nothing new during the record, its reserved peak too). It
costs a recorded micro-step and optimizer step, outside every timed and traced one.
"""

from __future__ import annotations

import linecache
from dataclasses import dataclass
from pathlib import Path

import torch

from sftbench.result import MEMORY_CATEGORIES, MemoryCategories, MemoryGroup

MIB = 2**20
TRAINABLE, FROZEN, GRADIENTS, OPTIMIZER = "trainable parameters", "frozen parameters", "gradients", "optimizer states"
ACTIVATIONS = "activations and temporaries"
HELD_BEFORE = "held from before the step (caches, workspaces)"
GROUPS = 8  # the largest groups of activations and temporaries kept in a result


@dataclass
class Block:
    size: int
    where: str  # the allocating line (allocation_site); HELD_BEFORE for a block allocated before the record
    address: int


def owners(model, optimizer) -> dict[int, str]:
    """The address of every tensor the training holds, with its category. Buffers (GPTQ's packed weights and
    scales) and bitsandbytes' quantization state count as frozen parameters."""
    found: dict[int, str] = {}

    def add(tensor, category: str) -> None:
        if isinstance(tensor, torch.Tensor) and tensor.numel():
            found.setdefault(tensor.untyped_storage().data_ptr(), category)

    for parameter in model.parameters():
        add(parameter, TRAINABLE if parameter.requires_grad else FROZEN)
        add(parameter.grad, GRADIENTS)
        for tensor in _quant_state_tensors(getattr(parameter, "quant_state", None)):
            add(tensor, FROZEN)
    for buffer in model.buffers():
        add(buffer, FROZEN)
    for state in optimizer.state.values():
        for tensor in state.values():
            add(tensor, OPTIMIZER)
    return found


def _quant_state_tensors(state, depth: int = 2) -> list[torch.Tensor]:
    """The tensors of a bitsandbytes QuantState (absmax, code, and those of its nested state2)."""
    if state is None or depth == 0 or not hasattr(state, "__dict__"):
        return []
    tensors = []
    for value in vars(state).values():
        tensors += [value] if isinstance(value, torch.Tensor) else _quant_state_tensors(value, depth - 1)
    return tensors


def live_at_peak(events: list[dict], blocks_at_end: list[dict]) -> tuple[list[Block], int, int]:
    """Replay an allocator record: (the blocks alive at its allocated peak, the bytes allocated then beyond those
    at the start, the bytes reserved then beyond those at the start). Blocks alive before the record are those
    freed during it without being allocated in it, and those alive at its end (`blocks_at_end`: the snapshot's
    blocks in use) that were not allocated in it."""
    window: dict[int, int] = {}  # address -> size of blocks allocated during the record and not yet freed
    before: dict[int, int] = {}
    for event in events:
        if event["action"] == "alloc":
            window[event["addr"]] = event["size"]
        elif event["action"] == "free_completed" and window.pop(event["addr"], None) is None:
            before.setdefault(event["addr"], event["size"])
    for block in blocks_at_end:
        if block["address"] not in window:
            before.setdefault(block["address"], block["size"])
    allocated = peak = reserved = reserved_at_peak = 0
    peak_index = -1
    for i, event in enumerate(events):
        action, size = event["action"], event.get("size", 0)
        allocated += {"alloc": size, "free_completed": -size}.get(action, 0)
        reserved += {"segment_alloc": size, "segment_free": -size}.get(action, 0)
        if allocated > peak:
            peak, peak_index, reserved_at_peak = allocated, i, reserved
    live = {address: Block(size, HELD_BEFORE, address) for address, size in before.items()}
    for event in events[:peak_index + 1]:
        if event["action"] == "alloc":
            live[event["addr"]] = Block(event["size"], allocation_site(event.get("frames", [])), event["addr"])
        elif event["action"] == "free_completed":
            live.pop(event["addr"], None)
    return list(live.values()), peak, reserved_at_peak


def categorize(blocks: list[Block], owned: dict[int, str], reserved_mib: float) -> MemoryCategories:
    """The blocks alive at the peak by category; activations and temporaries also by where they were allocated."""
    by_category = dict.fromkeys((TRAINABLE, FROZEN, GRADIENTS, OPTIMIZER, ACTIVATIONS), 0)
    for block in blocks:
        by_category[owned.get(block.address, ACTIVATIONS)] += block.size
    peak_mib = sum(by_category.values()) / MIB
    others = by_site([block for block in blocks if block.address not in owned])
    return MemoryCategories(
        peak_mib=peak_mib, slack_mib=reserved_mib - peak_mib,
        groups=[MemoryGroup(where, size / MIB, count) for where, size, count in others[:GROUPS]],
        **{MEMORY_CATEGORIES[name]: size / MIB for name, size in by_category.items()})


def by_site(blocks: list[Block]) -> list[tuple[str, int, int]]:
    """(where, bytes, blocks) of the blocks grouped by where they were allocated, largest first."""
    groups: dict[str, list[int]] = {}
    for block in blocks:
        group = groups.setdefault(block.where, [0, 0])
        group[0] += block.size
        group[1] += 1
    return sorted(((where, size, count) for where, (size, count) in groups.items()), key=lambda g: -g[1])


def recorded(device: torch.device, work) -> tuple[list[dict], list[dict]]:
    """Run `work` with the caching allocator recording each allocation with its Python stack: (the record's
    events, the blocks in use at its end)."""
    torch.cuda.memory._record_memory_history(enabled="all", context="alloc", stacks="python",
                                            max_entries=2_000_000)
    try:
        work()
        torch.cuda.synchronize(device)
        snapshot = torch.cuda.memory._snapshot()
    finally:
        torch.cuda.memory._record_memory_history(enabled=None)
    events = snapshot["device_traces"][device.index if device.index is not None else torch.cuda.current_device()]
    return events, [block for segment in snapshot["segments"] for block in segment["blocks"]
                    if block["state"] != "inactive"]


def categories_at_peak(trainer, batch) -> MemoryCategories:
    """Record the allocator through a micro-step of `batch` with gradients present and the optimizer step after
    it, and sort the bytes alive at its allocated peak (module docstring)."""
    device = trainer.device
    trainer.ensure_gradients(batch)  # the epoch's worst state has gradients present
    torch.cuda.synchronize(device)
    owned = owners(trainer.model, trainer.optimizer)
    reserved_before = torch.cuda.memory_reserved(device)

    def step() -> None:
        trainer.micro_step(batch)
        trainer.optimizer_step()

    blocks, _, reserved_growth = live_at_peak(*recorded(device, step))
    return categorize(blocks, owned, (reserved_before + reserved_growth) / MIB)


def allocation_site(frames: list[dict]) -> str:
    """The innermost frame outside torch itself (torch.utils.checkpoint counts as outside: it saves the layers'
    inputs), with its line of code; the backward pass runs in autograd's own thread, without Python frames."""
    for frame in frames:
        name = frame.get("filename", "")
        if "/torch/" not in name or "checkpoint" in name:
            code = linecache.getline(name, frame.get("line", 0)).strip()
            return f"`{code}` ({Path(name).name}:{frame.get('line')})"
    return f"in {frames[0]['name']}" if frames else "in the backward pass"
