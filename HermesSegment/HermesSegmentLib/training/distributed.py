"""Data-parallel training with the standard engine: torchrun + DistributedDataParallel.

``hermes-segment train`` started by ``torchrun --nproc_per_node N`` (one node or many) finds
``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` in its environment, joins the process group (NCCL on GPUs,
gloo on CPU) and wraps the network in DDP. Each rank draws its own batches from its own random
stream (the distributed-sampler equivalent for an infinite, weighted sampler); DDP averages the
gradients, so every rank holds identical weights after every step. Rank 0 alone logs, validates,
checkpoints and exports. Without those variables everything here is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: ``rank`` of ``world_size``, and the device it trains on."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init(device: str = "auto") -> DistContext:
    """Join the torchrun process group if there is one; pick this rank's device.

    ``device``: "auto" (CUDA when available), "cpu" or "cuda".
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if world <= 1:
        return DistContext(device=torch.device("cuda" if use_cuda else "cpu"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(),
                       device=torch.device(f"cuda:{local_rank}" if use_cuda else "cpu"))


def wrap(network: torch.nn.Module, context: DistContext) -> torch.nn.Module:
    """DDP around ``network`` when distributed, else ``network`` itself."""
    if not context.distributed:
        return network
    from torch.nn.parallel import DistributedDataParallel

    ids = [context.device.index] if context.device.type == "cuda" else None
    return DistributedDataParallel(network, device_ids=ids)


def barrier(context: DistContext) -> None:
    if context.distributed:
        dist.barrier()


def broadcast_int(value: int, context: DistContext) -> int:
    """Rank 0's ``value`` on every rank (a decision all ranks must share)."""
    if not context.distributed:
        return value
    holder = torch.tensor([value], dtype=torch.long, device=context.device)
    dist.broadcast(holder, src=0)
    return int(holder.item())


def shutdown(context: DistContext) -> None:
    if context.distributed and dist.is_initialized():
        dist.destroy_process_group()
