"""Data-parallel training under torchrun (DistributedDataParallel): gloo on CPU, NCCL on GPU.

Without torchrun (WORLD_SIZE unset) everything here is a no-op: one process, rank 0.
Every rank draws the same global batch of indices and keeps its own slice, so the
gradient DDP averages is the gradient of the full global batch.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from mnistgen.runtime import configure_cuda


@dataclass
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, global_idx: torch.Tensor) -> torch.Tensor:
        """This rank's slice of a global batch of indices."""
        return global_idx[self.rank::self.size]

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        if self.size == 1:
            return model
        ids = [device.index if device.index is not None else 0] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def all_finite(self, value: torch.Tensor) -> bool:
        """Whether `value` is finite on every rank. Ranks must skip or apply an update
        together: a rank that skips its backward leaves the others waiting forever in DDP's
        gradient all-reduce."""
        ok = torch.isfinite(value.detach()).all().to(torch.int32).reshape(1)  # on value's device
        if self.size > 1:
            dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        return bool(ok.item())

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()


def init(device: torch.device) -> World:
    """Join the process group torchrun describes through WORLD_SIZE / RANK / LOCAL_RANK."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    world = World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return world


def local_device(device: torch.device, world: World) -> torch.device:
    """One GPU per process on CUDA; the CPU is shared."""
    if device.type == "cuda" and world.size > 1:
        torch.cuda.set_device(world.local_rank)
        return torch.device("cuda", world.local_rank)
    return device


def start(device: torch.device) -> tuple[World, torch.device]:
    """init + local_device + the device's fast settings: (this process's world, its device)."""
    world = init(device)
    device = local_device(device, world)
    configure_cuda(device)
    return world, device


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
