"""Runs under `torchrun`: which rank this process is, and which part of the work it owns.

    torchrun --nproc-per-node N -m stages.extract        # N processes (N GPUs, or N CPU processes)

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them this is a single process (rank 0 of 1)
and nothing is initialised. Ranks own whole cache shards, so no two processes ever write the same
zarr shard file; rank 0 alone creates or resizes arrays, and the others wait for it at a barrier.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import polars as pl
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    """This process's place among the processes of the run."""

    rank: int  # 0..world-1
    world: int  # number of processes
    local: int  # rank on this machine: which GPU to use


SINGLE = Ranks(rank=0, world=1, local=0)  # a run without torchrun


def init_ranks(device: torch.device) -> Ranks:
    """Read torchrun's environment and join the process group (gloo on CPU, nccl on GPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    ranks = Ranks(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return ranks


def rank_device(device: torch.device, ranks: Ranks) -> torch.device:
    """One GPU per local rank; the CPU stays the CPU."""
    return torch.device("cuda", ranks.local) if device.type == "cuda" and ranks.world > 1 else device


def barrier(ranks: Ranks) -> None:
    if ranks.world > 1:
        dist.barrier()


def total(value: float, ranks: Ranks, device: torch.device) -> float:
    """`value` summed over the ranks (a counter of the work each did); `device` is this rank's."""
    if ranks.world == 1:
        return value
    summed = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(summed)
    return summed.item()


T = TypeVar("T")
C = TypeVar("C")  # a row cache (roadwork.features.cache.RowCache): anything with `shard_rows`


def rank_zero_first(open_and_plan: Callable[[], T], ranks: Ranks) -> T:
    """`open_and_plan()` on rank 0, then on the other ranks once rank 0 is done. Rank 0 thereby alone
    creates a cache and appends its new rows (the only resizes); the others find nothing to append."""
    if ranks.rank == 0:
        result = open_and_plan()
    barrier(ranks)
    if ranks.rank != 0:
        result = open_and_plan()
    return result


def owns(rows: np.ndarray, shard_rows: int, ranks: Ranks) -> np.ndarray:
    """bool mask of the cache `rows` whose shard is this rank's: shard k to rank k mod N."""
    return (np.asarray(rows) // shard_rows) % ranks.world == ranks.rank


def plan_for_rank(
    open_and_plan: Callable[[], tuple[C, pl.DataFrame]], ranks: Ranks
) -> tuple[C, pl.DataFrame]:
    """The cache and this rank's jobs. `open_and_plan()` opens a row cache, appends the new images' rows
    and returns the jobs (with their `cache_row`); rank 0 runs it first, and each rank keeps the jobs in
    its own shards."""
    cache, jobs = rank_zero_first(open_and_plan, ranks)
    return cache, jobs.filter(pl.Series(owns(jobs["cache_row"].to_numpy(), cache.shard_rows, ranks)))
