"""Data parallelism through torchrun: `torchrun --nproc_per_node=N -m trainlab train ...`.

Each process holds the whole model and a 1/N share of every batch (DDP averages the gradients);
rank 0 alone writes metrics, samples and checkpoints; the stop decisions (time budget, signals)
are agreed on every step, so no process waits for a partner that has left. gloo on CPUs, nccl on
GPUs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def from_env() -> Dist:
    """The process's place in a torchrun job (a single process when not under torchrun)."""
    return Dist(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                int(os.environ.get("LOCAL_RANK", 0)))


def init(d: Dist, device_type: str) -> None:
    if d.active and not dist.is_initialized():
        if device_type == "cuda":
            torch.cuda.set_device(d.local_rank)
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")


def shutdown(d: Dist) -> None:
    if d.active and dist.is_initialized():
        dist.destroy_process_group()


def barrier(d: Dist) -> None:
    if d.active:
        dist.barrier()


def all_reduce(t: torch.Tensor, d: Dist, op: str = "sum") -> torch.Tensor:
    if d.active:
        dist.all_reduce(t, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
    return t
