"""Filling the mask cache (`roadwork.masks.cache`): with SAM 3, each image decoded once, encoded once,
masked for every prompt and reduced to the cache's grids; or from the synthetic data's true polygons.

Work proceeds shard by shard of the cache, like `extract`: a shard's rows are marked done only after
their values are written, so a killed run resumes at the first unfinished shard, and new images only
append rows (incremental); under torchrun each rank fills its own shards. Images are decoded at the
reduced JPEG scale that still covers the model input (the masks are coarse) and resized with PIL's
antialiasing filter in the DataLoader workers.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from roadwork.config import Paths
from roadwork.data.images import ShardReader, decode
from roadwork.device import resolve_device
from roadwork.distributed import SINGLE, Ranks, plan_for_rank, rank_device
from roadwork.features.cache import ShardWriter
from roadwork.masks.cache import (
    MaskCache,
    expected_attrs,
    mask_grids,
    source_manifest,
    truth_path,
)
from roadwork.masks.config import MasksConfig
from roadwork.masks.sam import encode_prompts, input_size, load_sam, predict_masks
from roadwork.masks.truth import fill_truth_masks, read_truth
from roadwork.progress import progress
from roadwork.views.plan import boxes_by_image, read_plan

if TYPE_CHECKING:
    from transformers import Sam3Model, Sam3Processor

# One resize per image (views have twelve): PIL shrinks by an integer factor with a box filter, then
# resamples the rest bilinearly, antialiased.
REDUCING_GAP = 2.0
RESAMPLE = Image.Resampling.BILINEAR


def load_image(data: bytes, size: tuple[int, int], target: tuple[int, int]) -> np.ndarray:
    """uint8 [h, w, 3]: the whole image (displayed `size` = (width, height)) resized to `target` (h, w).

    Decoded at the coarsest JPEG reduction that still has at least `target` pixels along each axis;
    the decoded size is checked against the planned size so that a wrong plan fails loudly.
    """
    width, height = size
    min_scale = min(1.0, max(target[0] / height, target[1] / width))
    image, scale = decode(data, min_side_scale=min_scale)
    expected = (math.ceil(width * scale - 1e-9), math.ceil(height * scale - 1e-9))
    if image.size != expected:
        raise ValueError(
            f"load_image: image decodes to {image.width}x{image.height} at scale {scale:.4g}, "
            f"expected {expected[0]}x{expected[1]} for a planned size of {width}x{height}"
        )
    # The decoder rounds the reduced size up: the box keeps exactly the displayed image in view.
    box = (0.0, 0.0, width * scale, height * scale)
    resized = image.resize((target[1], target[0]), RESAMPLE, box=box, reducing_gap=REDUCING_GAP)
    return np.array(resized)  # writable: the processor turns it into a tensor


class ImageDataset(Dataset):
    """Item i: (cache row, uint8 [h, w, 3] model-input image) of job i."""

    def __init__(self, raw_root: Path, jobs: pl.DataFrame, target: tuple[int, int]):
        self.reader = ShardReader(raw_root)
        self.jobs = jobs.select("image_id", "shard", "row", "width", "height", "cache_row").to_dicts()
        self.target = target

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray]:
        job = self.jobs[i]
        data = self.reader.read(job["shard"], job["row"])
        try:
            image = load_image(data, (job["width"], job["height"]), self.target)
        except ValueError as e:
            raise ValueError(f"image {job['image_id']} ({job['shard']} row {job['row']}): {e}") from e
        return job["cache_row"], image


def _collate(items: list[tuple[int, np.ndarray]]) -> list[tuple[int, np.ndarray]]:
    return items


def plan_jobs(index: pl.DataFrame, cache: MaskCache, config: MasksConfig) -> pl.DataFrame:
    """Rows of `index` (in `config.splits`) not yet done in the cache, with their cache row."""
    rows = index.filter(pl.col("split").is_in(list(config.splits)))
    cache_rows = cache.ensure_rows(rows["image_id"].to_list())
    rows = rows.with_columns(cache_row=pl.Series(cache_rows, dtype=pl.Int64))
    return rows.filter(pl.Series(~cache.done_mask(cache_rows))).sort("cache_row")


def pixel_values(processor: Sam3Processor, images: list[np.ndarray], model: Sam3Model) -> torch.Tensor:
    """The processor's rescale + normalisation of already resized images, on the model's device/dtype."""
    pixels = processor.image_processor(images=images, do_resize=False, return_tensors="pt")["pixel_values"]
    parameter = next(model.parameters())
    return pixels.to(parameter.device, parameter.dtype)


def fill_masks(
    *,
    model: Sam3Model,
    processor: Sam3Processor,
    cache: MaskCache,
    jobs: pl.DataFrame,
    raw_root: Path,
    boxes: dict[str, np.ndarray],
    config: MasksConfig,
) -> dict[str, float]:
    """Fill the cache for `jobs` (sorted by cache row); returns counters for the log."""
    prompts = encode_prompts(model, processor, config.prompts)  # once per run, shared by every image
    ids = dict(zip(jobs["cache_row"].to_list(), jobs["image_id"].to_list(), strict=True))
    sizes = {r: (w, h) for r, w, h in jobs.select("cache_row", "width", "height").iter_rows()}
    writer = ShardWriter(cache, list(ids))
    loader = DataLoader(
        ImageDataset(raw_root, jobs, input_size(processor)),
        batch_size=config.batch_images,
        num_workers=config.workers,
        collate_fn=_collate,
        prefetch_factor=4 if config.workers else None,
    )
    started, coverage = time.perf_counter(), np.zeros(len(config.prompts))
    for batch in progress(loader, total=len(jobs), desc="masks", unit="img", count=len):
        pixels = pixel_values(processor, [image for _, image in batch], model)
        masks = predict_masks(model, processor, pixels, prompts, config)
        for (row, _), image_masks in zip(batch, masks, strict=True):
            values = mask_grids(image_masks, boxes[ids[row]], sizes[row], config.image_grid, config.view_grid)
            coverage += values["image_mask"].astype(np.float32).mean(axis=(-2, -1))
            writer.add(row, values)
    seconds = time.perf_counter() - started
    mean = coverage / max(len(jobs), 1)
    return {
        "images": len(jobs),
        "seconds": round(seconds, 2),
        **{f"coverage/{p}": round(float(c), 4) for p, c in zip(config.prompts, mean, strict=True)},
    }


def run_masks(
    *, paths: Paths, config: MasksConfig, index: pl.DataFrame, ranks: Ranks = SINGLE
) -> dict[str, Any]:
    """The `masks` stage's work for this rank: open (or create) the cache, append the new images, and
    fill this rank's unfinished rows from SAM 3 or (`masks.source: truth`) the true polygons; the model
    loads only if rows are left. Returns counters (to do, skipped, images, seconds, coverage per prompt)."""
    source = source_manifest(config, sam_dir=Path(paths.sam), raw_root=Path(paths.raw))
    plan, plan_meta = read_plan(Path(paths.views))

    def open_and_plan() -> tuple[MaskCache, pl.DataFrame]:
        cache = MaskCache.create(
            Path(paths.masks),
            config=config,
            views=plan_meta["n_views"],
            attrs=expected_attrs(config, sam=source, plan_meta=plan_meta),
        )
        return cache, plan_jobs(index, cache, config)

    cache, jobs = plan_for_rank(open_and_plan, ranks)
    counts: dict[str, Any] = {"todo": len(jobs), "skipped": len(cache.row_of) - len(jobs)}
    if not len(jobs):
        return counts
    boxes = boxes_by_image(plan)
    if config.source == "truth":
        truth = read_truth(truth_path(Path(paths.raw)))
        return counts | fill_truth_masks(cache=cache, jobs=jobs, truth=truth, boxes=boxes, config=config)
    device = rank_device(resolve_device(config.device), ranks)
    model, processor = load_sam(Path(paths.sam), config.dtype, device)
    return counts | fill_masks(
        model=model,
        processor=processor,
        cache=cache,
        jobs=jobs,
        raw_root=Path(paths.raw),
        boxes=boxes,
        config=config,
    )
