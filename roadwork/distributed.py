"""Runs under `torchrun`: which rank this process is, and which part of the work it owns.

    torchrun --nproc-per-node N -m stages.extract        # N processes (N GPUs, or N CPU processes)

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them this is a single process (rank 0 of 1)
and nothing is initialised. Ranks own whole cache chunks, so no two processes ever write the same
zarr chunk; rank 0 alone creates or resizes arrays, and the others wait for it at a barrier.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import polars as pl
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    """This process's place among the processes of the run."""

    rank: int  # 0..world-1
    world: int  # number of processes
    local: int  # rank on this machine: which GPU to use


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


def owned_chunks(jobs: pl.DataFrame, chunk_rows: int, ranks: Ranks) -> pl.DataFrame:
    """The jobs (with a `cache_row` column) whose cache chunk is this rank's: chunk k to rank k mod N."""
    return jobs.filter((pl.col("cache_row") // chunk_rows) % ranks.world == ranks.rank)
