"""Everything DDP in one place: read torchrun's environment, gate writes, reduce metrics.

Nothing here is global: :func:`init_distributed` returns a :class:`DistContext` that the
engine passes around. Without torchrun (no ``WORLD_SIZE``) it is a single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job.

    Attributes:
        rank: global rank; 0 is the primary (the only one that writes).
        world_size: number of processes.
        local_rank: rank on this machine (selects the GPU).
        device: the torch device this process uses.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def is_primary(self) -> bool:
        return self.rank == 0

    def print(self, *lines: str) -> None:
        """Log lines from the primary process only (the others say the same)."""
        if self.is_primary():
            for line in lines:
                print(line, flush=True)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Element-wise sum over processes (returns a new CPU float64 tensor)."""
        t = values.detach().to(self.device, dtype=torch.float64).clone()
        if self.distributed:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.cpu()

    def all_gather_object(self, obj) -> list:
        """``[obj of rank 0, obj of rank 1, ...]`` on every process (small picklable objects)."""
        if not self.distributed:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj):
        """``obj`` from the primary, on every process."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def init_distributed(device: str = "auto") -> DistContext:
    """Set up the process group when launched by torchrun (NCCL on GPU, gloo on CPU).

    Collective timeout: ``$DATALOUPE_DIST_TIMEOUT_MIN`` minutes (default 180), long enough for
    the primary to build an ImageNet-size cache or store while the others wait.

    Args:
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
    """
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("device=cuda but CUDA is not available")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        # Ranks wait at a barrier while the primary builds the decoded cache or the training store
        # (ImageNet: many minutes); NCCL's default 10 min / gloo's 30 min would end the job.
        minutes = float(os.environ.get("DATALOUPE_DIST_TIMEOUT_MIN", "180"))
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", device_id=dev if use_cuda else None,
                                timeout=timedelta(minutes=minutes))
    return DistContext(rank=rank, world_size=world, local_rank=local, device=dev)


def shutdown_distributed(ctx: DistContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()
