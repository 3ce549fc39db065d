"""``torch.distributed`` for training and evaluation: one process per device, started by ``torchrun``.

``setup(device)`` joins the process group that ``torchrun`` describes in the environment (``WORLD_SIZE``,
``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``/``PORT``): NCCL on CUDA (each rank on ``cuda:LOCAL_RANK``), gloo on CPU.
Without those variables everything here is the single-process identity, so the training loop reads the same.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .ranks import launched_by_torchrun


@dataclass(frozen=True)
class Dist:
    """This process's place: ``rank`` of ``world`` processes; ``device`` is the one it computes on."""

    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        """Rank 0: the only process that logs, writes metrics, TensorBoard events and checkpoints."""
        return self.rank == 0



def setup(device: torch.device) -> Dist:
    """Join the ``torchrun`` process group (once per process); the single-process ``Dist`` otherwise."""
    if not launched_by_torchrun():
        return Dist(0, 1, device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", device_id=device if device.type == "cuda"
                                else None)
    return Dist(dist.get_rank(), dist.get_world_size(), device)


def teardown() -> None:
    """Leave the process group (after the last collective)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def broadcast_tensor(tensor: torch.Tensor, device: torch.device, src: int = 0) -> torch.Tensor:
    """Rank ``src``'s copy of ``tensor`` on every rank (sent through ``device``, returned where it was)."""
    if not active():
        return tensor
    moved = tensor.to(device)
    dist.broadcast(moved, src)
    return moved.to(tensor.device)


def broadcast_buffers(module: nn.Module, src: int = 0) -> None:
    """Copy every buffer of ``module`` (e.g. fitted confounder dictionaries) from rank ``src`` to all ranks."""
    if not active():
        return
    for buffer in module.buffers():
        dist.broadcast(buffer.data, src)


def mean_over_ranks(values: list[float], device: torch.device) -> list[float]:
    """Element-wise mean of per-rank floats (float64 all-reduce); the values themselves in one process."""
    if not active():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return (t / dist.get_world_size()).tolist()


def sum_over_ranks(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum of per-rank floats (float64 all-reduce); the values themselves in one process."""
    if not active():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def gather_by_index(index: np.ndarray, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """Every rank's rows of ``arrays`` (aligned with dataset ``index[n]``), merged in dataset order.

    A sampler pads the last shard by repeating items; those duplicates are dropped (first copy kept).
    Returns ``(index, *arrays)`` sorted by index, identical on every rank.
    """
    if active():
        parts: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, (index, *arrays))
        index = np.concatenate([p[0] for p in parts])
        arrays = tuple(np.concatenate([p[i + 1] for p in parts]) for i in range(len(arrays)))
    _, first = np.unique(index, return_index=True)
    return (index[first], *(a[first] for a in arrays))


def gather_lists(items: list[str]) -> list[str]:
    """The concatenation of every rank's ``items`` (rank order); ``items`` itself in one process."""
    if not active():
        return items
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, items)
    return [item for part in parts for item in part]
