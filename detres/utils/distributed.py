"""Process-group helpers (torchrun environment): rank queries, gathers, and set-up."""
from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist


def is_dist() -> bool:
    """True inside an initialized process group."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """This process' global rank (0 without a process group)."""
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if is_dist() else 1


def get_local_rank() -> int:
    """Rank on this machine, from torchrun's LOCAL_RANK."""
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main_process() -> bool:
    """Only rank 0 writes files and logs."""
    return get_rank() == 0


def barrier() -> None:
    """Wait for every process (no-op alone)."""
    if is_dist():
        dist.barrier()


def init_from_env(backend: str | None = None, timeout_min: int = 30) -> bool:
    """Join the process group described by torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR...).

    Returns True when running distributed. gloo on CPU, nccl when CUDA is available.
    """
    if is_dist():
        return True
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1:
        return False
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(get_local_rank())
    dist.init_process_group(backend=backend, timeout=timedelta(minutes=timeout_min))
    return True


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` alone)."""
    if not is_dist():
        return [obj]
    out: list[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of ``t`` over ranks (``t`` alone)."""
    if not is_dist():
        return t
    t = t.clone()
    dist.all_reduce(t)
    return t / get_world_size()
