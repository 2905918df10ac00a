"""torchrun support: each rank takes every world_size-th work unit and writes its own shards."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def setup() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment; joins the process group if world > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return rank, world, local


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
