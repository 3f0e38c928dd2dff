"""The SAM 3 mask cache: each image decoded once, encoded once, masked for every prompt, reduced to grids.

Layout of `features/masks.zarr` (a `RowCache`, rows keyed by image id):
    image_mask   [N, P, M, M]     float16  fraction of each cell of the whole image covered, per prompt
    view_masks   [N, V, P, G, G]  float16  the same over each view box of the plan
    coverage     [N, V, P]        float32  fraction of each view covered, per prompt
    image_id [N], done [N]; attrs: SAM 3 and view-rule fingerprints, prompts, thresholds, grids

Geometry: the processor stretches the whole image to its square input, so pixel (r, c) of an h x w
mask covers the full-resolution box [c W/w, (c+1) W/w) x [r H/h, (r+1) H/h). Grid values are exact
area fractions of that piecewise-constant mask over equal cells of a box (whole image or view).

Work proceeds shard by shard of the cache, like `extract`: a shard's rows are marked done only after
their values are written, so a killed run resumes at the first unfinished shard, and new images only
append rows (incremental); under torchrun each rank fills its own shards. Images are decoded at the
reduced JPEG scale that still covers the model input (the masks are coarse) and resized with PIL's
antialiasing filter in the DataLoader workers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from roadwork.data.images import ShardReader, decode
from roadwork.features.cache import RowCache, ShardWriter
from roadwork.features.sam import MasksConfig, encode_prompts, input_size, predict_masks

if TYPE_CHECKING:
    from transformers import Sam3Model, Sam3Processor

# Bump when the meaning of the stored masks changes (post-processing, geometry): old caches go stale.
MASKS_FORMAT = 1
# One resize per image (views have twelve): PIL shrinks by an integer factor with a box filter, then
# resamples the rest bilinearly, antialiased.
REDUCING_GAP = 2.0
RESAMPLE = Image.Resampling.BILINEAR


def area_weights(start: float, end: float, length: float, pixels: int, cells: int) -> np.ndarray:
    """float64 [cells, pixels]: the share of each of `cells` equal cells of [start, end) covered by each of
    `pixels` equal mask pixels spanning [0, length). A cell's value is then weights @ mask."""
    if not 0 <= start < end <= length:
        raise ValueError(f"area_weights: span [{start}, {end}) is empty or outside [0, {length})")
    cell_edges = start + (end - start) * np.arange(cells + 1) / cells
    pixel_edges = length * np.arange(pixels + 1) / pixels
    lo = np.maximum(cell_edges[:-1, None], pixel_edges[None, :-1])
    hi = np.minimum(cell_edges[1:, None], pixel_edges[None, 1:])
    return np.clip(hi - lo, 0.0, None) * (cells / (end - start))


def grid_fractions(masks: torch.Tensor, boxes: np.ndarray, size: tuple[int, int], cells: int) -> torch.Tensor:
    """float32 [V, P, cells, cells]: fraction of each cell of each box covered by each mask.

    `masks` [P, h, w] covers the whole image of displayed `size` (width, height); `boxes` [V, 4] are
    (x0, y0, x1, y1) in those full-resolution pixels.
    """
    width, height = size
    h, w = masks.shape[-2:]
    wy = np.stack([area_weights(b[1], b[3], height, h, cells) for b in boxes.tolist()])
    wx = np.stack([area_weights(b[0], b[2], width, w, cells) for b in boxes.tolist()])
    as_tensor = {"device": masks.device, "dtype": torch.float32}
    rows = torch.einsum("vgy,pyx->vpgx", torch.as_tensor(wy, **as_tensor), masks.to(torch.float32))
    return torch.einsum("vpgx,vkx->vpgk", rows, torch.as_tensor(wx, **as_tensor))


def mask_grids(
    masks: torch.Tensor, boxes: np.ndarray, size: tuple[int, int], image_grid: int, view_grid: int
) -> dict[str, np.ndarray]:
    """One image's cache values from its masks [P, h, w]: `image_mask` [P, M, M] and `view_masks`
    [V, P, G, G] (float16 cell fractions) and `coverage` [V, P] (float32 fraction of each view)."""
    whole = np.array([[0, 0, size[0], size[1]]])
    image = grid_fractions(masks, whole, size, image_grid)[0]
    views = grid_fractions(masks, np.asarray(boxes), size, view_grid)
    return {
        "image_mask": image.cpu().numpy().astype(np.float16),
        "view_masks": views.cpu().numpy().astype(np.float16),
        "coverage": views.mean(dim=(-2, -1)).cpu().numpy().astype(np.float32),  # equal cells: exact
    }


class MaskCache(RowCache):
    """The SAM 3 mask cache (module docstring)."""

    kind = "mask cache"

    @classmethod
    def create(cls, path: Path, *, config: MasksConfig, views: int, attrs: dict[str, Any]) -> MaskCache:
        p, m, g = len(config.prompts), config.image_grid, config.view_grid
        arrays = {
            "image_mask": ((p, m, m), "float16"),
            "view_masks": ((views, p, g, g), "float16"),
            "coverage": ((views, p), "float32"),
        }
        return cls.create_or_open(
            path, arrays=arrays, chunk_rows=config.chunk_rows, shard_rows=config.shard_rows, attrs=attrs
        )

    def read(self, image_ids: Sequence[str]) -> dict[str, np.ndarray]:
        """Every mask array for `image_ids`, in their order."""
        return {name: self.read_array(name, image_ids) for name in self.array_names}


def expected_attrs(config: MasksConfig, *, sam: dict[str, Any], plan_meta: dict[str, Any]) -> dict[str, Any]:
    """Everything the cached masks depend on; readers compare this with the cache's attrs."""
    return {
        "sam_fingerprint": sam["fingerprint"],
        # The view rule, not the per-image plan: adding images must not invalidate the cache.
        "view_rule_fingerprint": plan_meta["rule_fingerprint"],
        "input_size": list(sam["input_size"]),
        "prompts": list(config.prompts),
        "score_threshold": config.score_threshold,
        "mask_threshold": config.mask_threshold,
        "image_grid": config.image_grid,
        "view_grid": config.view_grid,
        "masks_format": MASKS_FORMAT,
    }


def open_masks(
    path: Path, config: MasksConfig, *, sam: dict[str, Any], plan_meta: dict[str, Any]
) -> MaskCache:
    """Open the cache for reading; refuses one built with other weights, prompts, thresholds or views."""
    return MaskCache.open_checked(path, expected_attrs(config, sam=sam, plan_meta=plan_meta))


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
    for batch in loader:
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
