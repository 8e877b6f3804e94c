"""Multi-process evaluation under ``torchrun``: the process group is pretraining's (``mae.train.distributed``).

Evaluation sets are split across processes WITHOUT padding (``shard_indices``) and the results are summed or gathered
back into dataset order, so the numbers do not depend on the number of processes.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from ..train.distributed import DistInfo, all_reduce_sum, barrier, init_distributed, shutdown

__all__ = ["DistInfo", "all_reduce_sum", "barrier", "gather_rows", "init_distributed", "shard_indices", "shutdown"]


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
