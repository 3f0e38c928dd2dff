"""Backbone feature extraction: each image decoded once, cut into its views, run once per copy.

Copy 0 is the clean view; copies 1..aug_copies of a training image go through the heavy augmentation
pipeline, applied per view after resizing and seeded by (seed, image, copy, view), so that any run, in
any order, on any number of workers, produces the same features. Work proceeds chunk by chunk of the
cache; a chunk's rows are marked done only after their features are written, so a killed run resumes at
the first unfinished chunk.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import torch
from torch.utils.data import DataLoader, Dataset

from roadwork.data.images import ShardReader
from roadwork.distributed import Ranks, barrier, owned_chunks
from roadwork.features.backbone import pooled_tokens
from roadwork.features.cache import ExtractConfig, FeatureCache
from roadwork.views.augment import augment_views, build_augment
from roadwork.views.crops import load_views


class ViewDataset(Dataset):
    """Item i: all copies of image i as uint8 `[copies, V, side, side, 3]` (decoded once)."""

    def __init__(
        self, raw_root: Path, jobs: pl.DataFrame, boxes: dict[str, np.ndarray], config: ExtractConfig
    ):
        self.reader = ShardReader(raw_root)
        self.jobs = jobs.select(
            "image_id", "shard", "row", "width", "height", "cache_row", "copies"
        ).to_dicts()
        self.boxes = boxes
        self.config = config
        self.augment = build_augment(config.side) if config.aug_copies else None

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray]:
        job = self.jobs[i]
        data = self.reader.read(job["shard"], job["row"])
        size = (job["width"], job["height"])  # the plan's size: a mismatching image fails loudly
        clean = load_views(data, self.boxes[job["image_id"]], self.config.side, size=size)
        out = np.empty((job["copies"], *clean.shape), dtype=np.uint8)
        out[0] = clean
        for copy in range(1, job["copies"]):
            out[copy] = augment_views(
                clean, transform=self.augment, seed=self.config.seed, image_id=job["image_id"], copy=copy
            )
        return job["cache_row"], out


def _collate(items: list[tuple[int, np.ndarray]]) -> list[tuple[int, np.ndarray]]:
    return items  # images carry different numbers of copies: keep them apart


def plan_jobs(index: pl.DataFrame, cache: FeatureCache, config: ExtractConfig) -> pl.DataFrame:
    """Rows of `index` (in `config.splits`) not yet done in the cache, with their cache row and copies."""
    rows = index.filter(pl.col("split").is_in(list(config.splits)))
    cache_rows = cache.ensure_rows(rows["image_id"].to_list())
    rows = rows.with_columns(
        cache_row=pl.Series(cache_rows),
        copies=pl.when(pl.col("split") == "train").then(1 + config.aug_copies).otherwise(1).cast(pl.Int64),
    )
    return rows.filter(pl.Series(~cache.done_mask(cache_rows))).sort("cache_row")


def plan_for_rank(
    index: pl.DataFrame, open_cache: Callable[[], FeatureCache], config: ExtractConfig, ranks: Ranks
) -> tuple[FeatureCache, pl.DataFrame]:
    """The cache and this rank's jobs. Rank 0 creates the cache and appends the new rows (the only
    resizes); the other ranks open it once rank 0 is done, and find nothing left to append."""
    if ranks.rank == 0:
        cache = open_cache()
        jobs = plan_jobs(index, cache, config)
    barrier(ranks)
    if ranks.rank != 0:
        cache = open_cache()
        jobs = plan_jobs(index, cache, config)
    return cache, owned_chunks(jobs, cache.chunk_rows, ranks)


@torch.inference_mode()
def embed_views(model: torch.nn.Module, views: np.ndarray, config: ExtractConfig) -> np.ndarray:
    """uint8 `[n, side, side, 3]` -> float32 `[n, 3, D]` pooled tokens."""
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    pixels = torch.from_numpy(views).to(device).permute(0, 3, 1, 2).to(torch.float32).div_(255.0)
    mean = torch.tensor(config.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(config.std, device=device).view(1, 3, 1, 1)
    pixels = ((pixels - mean) / std).to(dtype)
    return pooled_tokens(model, pixels).float().cpu().numpy()


class _ChunkWriter:
    """Collects pooled features row by row and writes each cache chunk once all its rows are in."""

    def __init__(self, cache: FeatureCache, jobs: pl.DataFrame, shape: tuple[int, int, int, int]):
        self.cache = cache
        self.shape = shape  # (copies, views, 3, dim)
        self.copies = dict(zip(jobs["cache_row"].to_list(), jobs["copies"].to_list(), strict=True))
        self.pending: dict[int, set[int]] = {}
        for row in self.copies:
            self.pending.setdefault(row // cache.chunk_rows, set()).add(row)
        self.buffers: dict[int, dict[int, np.ndarray]] = {}

    def add(self, cache_row: int, features: np.ndarray) -> None:
        chunk = cache_row // self.cache.chunk_rows
        self.buffers.setdefault(chunk, {})[cache_row] = features
        self.pending[chunk].discard(cache_row)
        if not self.pending[chunk]:
            rows = np.array(sorted(self.buffers[chunk]), dtype=np.int64)
            block = np.zeros((len(rows), *self.shape), dtype=np.float32)
            for k, row in enumerate(rows):
                value = self.buffers[chunk][row]
                block[k, : len(value)] = value
            self.cache.write_features(rows, block, np.array([self.copies[r] for r in rows]))
            del self.buffers[chunk], self.pending[chunk]


def extract_with_model(
    *,
    model: torch.nn.Module,
    cache: FeatureCache,
    jobs: pl.DataFrame,
    raw_root: Path,
    boxes: dict[str, np.ndarray],
    config: ExtractConfig,
    dim: int,
    views: int,
) -> dict[str, float]:
    """Fill the cache for `jobs` (sorted by cache row); returns counters for the metrics."""
    writer = _ChunkWriter(cache, jobs, (1 + config.aug_copies, views, 3, dim))
    loader = DataLoader(
        ViewDataset(raw_root, jobs, boxes, config),
        batch_size=config.batch_images,
        num_workers=config.workers,
        collate_fn=_collate,
        prefetch_factor=4 if config.workers else None,
    )
    started, n_views = time.perf_counter(), 0
    for batch in loader:
        stacked = np.concatenate([v.reshape(-1, *v.shape[2:]) for _, v in batch])
        pooled = embed_views(model, stacked, config)
        offset = 0
        for cache_row, v in batch:
            n = v.shape[0] * v.shape[1]
            writer.add(cache_row, pooled[offset : offset + n].reshape(v.shape[0], views, 3, dim))
            offset += n
        n_views += len(stacked)
    return {"images": len(jobs), "views": n_views, "seconds": round(time.perf_counter() - started, 2)}
