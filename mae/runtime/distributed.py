"""Several processes under ``torchrun`` or SLURM's ``srun``: nccl on CUDA, gloo on the CPU. A single process needs
none of it.

Who started the process decides how it joins (``launcher_env``):

- ``torchrun`` (its variables RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT, TORCHELASTIC_RUN_ID win whenever they
  are set, so torchrun inside an ``srun`` step and elastic restarts keep working);
- ``srun`` (SLURM_PROCID, SLURM_LOCALID, SLURM_NTASKS and SLURM_JOB_NODELIST, no torchrun variable): rank, local rank
  and world size come from SLURM, the address is the first host of the job's node list (``parse_nodelist``) and the
  port ``slurm_port(SLURM_JOB_ID)``, in ``[SLURM_PORT_BASE, SLURM_PORT_BASE + SLURM_PORT_SPAN)``; MASTER_ADDR and
  MASTER_PORT in the environment override both;
- neither: one process, no group.

A process that a launcher started joins its group even when it is the only one (``--nproc_per_node 1``): it then
runs exactly what each of N processes runs (DDP, all-reduces), which is how one GPU checks the multi-GPU path.

Pretraining and evaluation share this set-up. Evaluation sets are split across processes WITHOUT padding
(``shard_indices``) and gathered back into dataset order (``gather_rows``), so results do not depend on the number
of processes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["DEVICES", "SLURM_PORT_BASE", "SLURM_PORT_SPAN", "DistInfo", "Launch", "all_reduce_sum", "barrier",
           "check_device_name", "gather_rows", "init_distributed", "launcher_env", "parse_nodelist", "resolve_device",
           "shard_indices", "shutdown", "slurm_port"]

# What --device accepts (checked by every command's config); under torchrun each process takes cuda:LOCAL_RANK.
DEVICES = r"auto|cpu|cuda(:\d+)?"

# The port of a SLURM job's group: below Linux's ephemeral range (32768-60999), so no client socket holds it.
SLURM_PORT_BASE, SLURM_PORT_SPAN = 15000, 15000
_SLURM_VARS = ("SLURM_PROCID", "SLURM_LOCALID", "SLURM_NTASKS", "SLURM_JOB_NODELIST")
_TORCHRUN_VARS = ("TORCHELASTIC_RUN_ID", "RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    grouped: bool = False  # in a process group (torchrun or srun), even a group of one
    launcher: str | None = None  # "torchrun", "slurm", or None when alone

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
        if ":" in device:
            return torch.device(device)
        visible = torch.cuda.device_count()
        if local_rank < visible:
            return torch.device(f"cuda:{local_rank}")
        if visible == 1:  # srun --gpus-per-task shows each task only its own GPU, whatever its local rank
            return torch.device("cuda:0")
        raise ValueError(f"process {local_rank} of this node sees only {visible} GPUs: start one process per GPU "
                         "(torchrun --nproc_per_node, srun --ntasks-per-node) or one GPU per task (--gpus-per-task 1)")
    return torch.device("cpu")


def check_device_name(device: object) -> str:
    """A --device value: 'auto', 'cpu', 'cuda' or 'cuda:N'."""
    if not isinstance(device, str) or not re.fullmatch(DEVICES, device):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    return device


class Launch(NamedTuple):
    """Where this process stands in its launch: what ``launcher_env`` read from the environment."""

    launcher: str | None  # "torchrun", "slurm", or None (alone)
    rank: int
    local_rank: int
    world_size: int
    init_method: str | None  # None: torch's "env://" (torchrun) or no group


def parse_nodelist(nodelist: str) -> list[str]:
    """The host names of a SLURM node list, in order: ``"node[01-03,07],gpu5"`` -> node01, node02, node03, node07,
    gpu5. Ranges keep their zero padding; several bracket groups in one name multiply (``r[1-2]n[1-2]``).

    Raises:
        ValueError: an empty list, unbalanced brackets, or a range that runs backwards.
    """
    names, depth, start = [], 0, 0
    for i, char in enumerate(nodelist + ","):
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        if depth not in (0, 1):
            raise ValueError(f"SLURM node list {nodelist!r}: unbalanced brackets")
        if char == "," and depth == 0:
            names += _expand_host(nodelist[start:i].strip(), nodelist)
            start = i + 1
    if depth or not names:
        raise ValueError(f"SLURM node list {nodelist!r}: expected names like 'node[01-03,07],gpu5'")
    return names


def _expand_host(expr: str, nodelist: str) -> list[str]:
    """One comma-free entry of a node list, its bracket groups expanded left to right."""
    if not expr:
        raise ValueError(f"SLURM node list {nodelist!r}: an empty name")
    match = re.search(r"\[([^\[\]]*)\]", expr)
    if match is None:
        if "]" in expr:
            raise ValueError(f"SLURM node list {nodelist!r}: unbalanced brackets")
        return [expr]
    options = []
    for part in match.group(1).split(","):
        bounds = re.fullmatch(r"(\d+)(?:-(\d+))?", part.strip())
        if bounds is None:
            raise ValueError(f"SLURM node list {nodelist!r}: {part!r} is not a number or a range like 01-03")
        first, last = bounds.group(1), bounds.group(2) or bounds.group(1)
        if int(last) < int(first):
            raise ValueError(f"SLURM node list {nodelist!r}: the range {part!r} runs backwards")
        options += [str(n).zfill(len(first)) for n in range(int(first), int(last) + 1)]
    head, tail = expr[:match.start()], expr[match.end():]
    return [name for option in options for name in _expand_host(head + option + tail, nodelist)]


def slurm_port(job_id: str) -> int:
    """The port of a SLURM job's group: the same on every task of the job, another one for the job next to it."""
    digits = re.sub(r"\D", "", job_id)  # an array task's id may read "1234_5"
    return SLURM_PORT_BASE + int(digits or 0) % SLURM_PORT_SPAN


def launcher_env(env: Mapping[str, str] | None = None) -> Launch:
    """Who started this process, from its environment (see the module docstring)."""
    env = os.environ if env is None else env
    if any(name in env for name in _TORCHRUN_VARS):
        world_size = int(env.get("WORLD_SIZE", "1"))
        started = world_size > 1 or "TORCHELASTIC_RUN_ID" in env  # torchrun sets it in every process it starts
        return Launch("torchrun" if started else None, int(env.get("RANK", "0")), int(env.get("LOCAL_RANK", "0")),
                      world_size, None)
    if all(name in env for name in _SLURM_VARS):
        addr = env.get("MASTER_ADDR") or parse_nodelist(env["SLURM_JOB_NODELIST"])[0]
        port = env.get("MASTER_PORT") or slurm_port(env.get("SLURM_JOB_ID", "0"))
        return Launch("slurm", int(env["SLURM_PROCID"]), int(env["SLURM_LOCALID"]), int(env["SLURM_NTASKS"]),
                      f"tcp://{addr}:{port}")
    return Launch(None, 0, 0, 1, None)


def init_distributed(device: str) -> DistInfo:
    """Join the process group of ``torchrun`` or ``srun`` (``launcher_env``), or run alone."""
    launch = launcher_env()
    dev = resolve_device(device, launch.local_rank)
    grouped = launch.launcher is not None
    if grouped and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if launch.init_method is None:
            dist.init_process_group(backend=backend)
        else:
            dist.init_process_group(backend=backend, init_method=launch.init_method, rank=launch.rank,
                                    world_size=launch.world_size)
    return DistInfo(launch.rank, launch.local_rank, launch.world_size, dev, grouped, launch.launcher)


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
