"""Several processes under ``torchrun``: nccl on CUDA, gloo on the CPU. A single process needs none of it.

A process that ``torchrun`` started joins its group even when it is the only one (``--nproc_per_node 1``): it then
runs exactly what each of N processes runs (DDP, all-reduces), which is how one GPU checks the multi-GPU path.

Pretraining and evaluation share this set-up. Evaluation sets are split across processes WITHOUT padding
(``shard_indices``) and gathered back into dataset order (``gather_rows``), so results do not depend on the number
of processes.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["DEVICES", "DistInfo", "all_reduce_sum", "barrier", "gather_rows", "init_distributed", "resolve_device",
           "shard_indices", "check_device_name", "shutdown"]

# What --device accepts (checked by every command's config); under torchrun each process takes cuda:LOCAL_RANK.
DEVICES = r"auto|cpu|cuda(:\d+)?"


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    grouped: bool = False  # in a process group (torchrun), even a group of one

    @property
    def is_main(self) -> bool:
        """Only the main process writes files and prints."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1 or self.grouped


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """'auto' -> the CUDA device of this process when there is one, else the CPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} was requested but torch finds no CUDA GPU; use --device cpu or auto")
        return torch.device(device if ":" in device else f"cuda:{local_rank}")
    return torch.device("cpu")


def check_device_name(device: object) -> str:
    """A --device value: 'auto', 'cpu', 'cuda' or 'cuda:N'."""
    if not isinstance(device, str) or not re.fullmatch(DEVICES, device):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    return device


def init_distributed(device: str) -> DistInfo:
    """Join the process group set up by ``torchrun`` (WORLD_SIZE > 1, or started by torchrun), or run alone."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    grouped = world_size > 1 or "TORCHELASTIC_RUN_ID" in os.environ  # torchrun sets it in every process it starts
    if grouped and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank, local_rank, world_size, dev, grouped)


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def shard_indices(n: int, info: DistInfo) -> list[int]:
    """This process's share of ``range(n)``: every ``world_size``-th index, no padding, no repeats."""
    return list(range(info.rank, n, info.world_size))


def gather_rows(rows: Tensor, n: int, info: DistInfo) -> Tensor:
    """Put back together a (n, ...) tensor of which this process holds the rows ``shard_indices(n, info)``."""
    if not info.enabled:
        return rows
    per_rank = -(-n // info.world_size)  # ceil: shards differ in length by at most one
    padded = rows.new_zeros((per_rank, *rows.shape[1:]))
    padded[: rows.shape[0]] = rows
    parts = [torch.empty_like(padded) for _ in range(info.world_size)]
    dist.all_gather(parts, padded)
    out = rows.new_empty((n, *rows.shape[1:]))
    for r, part in enumerate(parts):
        count = len(range(r, n, info.world_size))
        out[r::info.world_size] = part[:count]
    return out
