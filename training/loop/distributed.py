"""Data-parallel training across processes: the launcher's environment, the process group, and
the few collectives the training loop needs.

``torchrun`` (or ``pix2pix train --nproc N``) starts one process per device and sets ``RANK``,
``LOCAL_RANK`` and ``WORLD_SIZE``. Without those variables everything here is a no-op and the
single-process path runs unchanged.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits among the training processes (rank 0 of 1 when alone)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over all processes, in place (the tensor itself when alone)."""
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def any(self, flag: torch.Tensor) -> bool:
        """Whether ``flag`` (a bool tensor) is true on any process; syncs with the device."""
        if not self.enabled:
            return bool(flag)
        value = flag.to(torch.int32).reshape(1)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def gather(self, value: object) -> list[object]:
        """One picklable ``value`` from every process, in rank order."""
        if not self.enabled:
            return [value]
        values: list[object] = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values


def context_from_environment() -> DistributedContext:
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistributedContext()
    return DistributedContext(
        rank=int(os.environ["RANK"]),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        world_size=int(os.environ["WORLD_SIZE"]),
    )


def setup(device_name: str) -> tuple[DistributedContext, str]:
    """Join the process group when launched by torchrun; returns the context and the device
    name this process should use (``cuda:LOCAL_RANK`` for a CUDA run)."""
    context = context_from_environment()
    if not context.enabled:
        return context, device_name
    use_cuda = device_name.startswith("cuda") or (
        device_name == "auto" and torch.cuda.is_available()
    )
    if use_cuda:
        torch.cuda.set_device(context.local_rank)
        device_name = f"cuda:{context.local_rank}"
    elif device_name == "auto":
        device_name = "cpu"
    if not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        # Binding NCCL to its device up front lets it connect eagerly and skips a warning.
        device_id = torch.device("cuda", context.local_rank) if use_cuda else None
        dist.init_process_group(backend=backend, device_id=device_id)
        logger.info("process group: %s, rank %d of %d", backend, context.rank, context.world_size)
    return context, device_name


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def wrap(module: nn.Module, context: DistributedContext, device: torch.device) -> nn.Module:
    """``module`` in DistributedDataParallel when there are several processes."""
    if not context.enabled:
        return module
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=device_ids)


def sync_batchnorm(module: nn.Module, context: DistributedContext) -> nn.Module:
    """Batch norm layers replaced by SyncBatchNorm when there are several processes."""
    if not context.enabled:
        return module
    return nn.SyncBatchNorm.convert_sync_batchnorm(module)
