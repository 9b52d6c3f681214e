"""Data-parallel fine-tuning under torchrun: process group set-up, barriers, and what rank 0 tells the rest.

Without WORLD_SIZE in the environment every helper is a no-op for a single process.
"""

from __future__ import annotations

import os
from typing import Any

import torch


def start(device: torch.device) -> tuple[int, int, torch.device, bool]:
    """(rank, world size, device, initialised here) when launched by torchrun (WORLD_SIZE set)."""
    if "WORLD_SIZE" not in os.environ:
        return 0, 1, device, False
    import torch.distributed as dist

    created = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        created = True
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    return dist.get_rank(), dist.get_world_size(), device, created


def stop(created: bool) -> None:
    """Tear down a process group that ``start`` created."""
    if created:
        torch.distributed.destroy_process_group()


def barrier(world: int) -> None:
    """Wait for every rank (nothing to wait for in a single process)."""
    if world > 1:
        torch.distributed.barrier()


def from_rank0(value: Any, world: int) -> Any:
    """Rank 0's ``value`` on every rank (e.g. an error only rank 0 could detect, so all ranks stop)."""
    if world <= 1:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def mean_over_ranks(value: torch.Tensor, world: int) -> torch.Tensor:
    """The mean of a scalar tensor over all ranks."""
    if world <= 1:
        return value
    torch.distributed.all_reduce(value)
    return value / world
