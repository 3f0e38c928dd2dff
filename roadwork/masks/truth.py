"""Ground-truth masks of the synthetic data, in the layout of the SAM 3 mask cache.

The generator knows where it drew every object: `synth` writes their polygons to a side table
(`TRUTH_FILE` beside the shards, keyed by shard and row; the shards themselves keep the exact NATIX
schema). With `masks.source: truth` the `masks` stage rasterises those polygons instead of running SAM 3
and reduces them with the same `mask_grids`, so the head's Dice term can be trained on true masks: the
ablation that tells the value of the pseudo-masks from the value of the auxiliary task itself.

Real data has no such table, and asking for truth masks there is an error, not a fallback.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from PIL import Image, ImageDraw

from roadwork.features.cache import ShardWriter
from roadwork.masks.cache import RASTER_PER_CELL, MaskCache, mask_grids
from roadwork.masks.config import MasksConfig

# Which drawn kind answers which prompt. No synthetic object answers "construction equipment": its
# true mask is empty, which is the truth about these images.
PROMPT_KINDS = {
    "traffic cone": "cone",
    "construction barrier": "barrier",
    "road work sign": "sign",
    "construction worker": "worker",
    "construction vehicle": "vehicle",
}


def read_truth(path: Path) -> dict[tuple[str, int], list[dict[str, Any]]]:
    """(shard, row) -> the objects drawn on that image: [{"kind", "polygons"}] in image pixels."""
    table = pl.read_ipc(path)
    return {
        (shard, row): json.loads(objects)
        for shard, row, objects in table.select("shard", "row", "objects").iter_rows()
    }


def rasterise(
    objects: Sequence[dict[str, Any]], size: tuple[int, int], prompts: Sequence[str], side: int
) -> torch.Tensor:
    """float32 [P, side, side] binary masks of the whole image (displayed `size` = (width, height))
    stretched to a square, like the SAM 3 input: one mask per prompt, the union of its kind's objects."""
    width, height = size
    scale = (side / width, side / height)
    out = np.zeros((len(prompts), side, side), dtype=np.float32)
    for p, prompt in enumerate(prompts):
        kind = PROMPT_KINDS.get(prompt)
        canvas = Image.new("L", (side, side), 0)
        draw = ImageDraw.Draw(canvas)
        for obj in objects:
            if obj["kind"] == kind:
                for polygon in obj["polygons"]:
                    # PIL puts integer coordinates on pixel centres: shift by half a pixel so that a
                    # pixel is on when its centre is inside the polygon (areas come out unbiased).
                    draw.polygon([(x * scale[0] - 0.5, y * scale[1] - 0.5) for x, y in polygon], fill=1)
        out[p] = np.asarray(canvas, dtype=np.float32)
    return torch.from_numpy(out)


def fill_truth_masks(
    *,
    cache: MaskCache,
    jobs: pl.DataFrame,
    truth: dict[tuple[str, int], list[dict[str, Any]]],
    boxes: dict[str, np.ndarray],
    config: MasksConfig,
) -> dict[str, float]:
    """Fill the cache for `jobs` (sorted by cache row) from the true polygons; counters for the log."""
    side = RASTER_PER_CELL * config.image_grid
    writer = ShardWriter(cache, jobs["cache_row"].to_list())
    started, coverage = time.perf_counter(), np.zeros(len(config.prompts))
    columns = ("cache_row", "image_id", "shard", "row", "width", "height")
    for cache_row, image_id, shard, row, width, height in jobs.select(columns).iter_rows():
        if (shard, row) not in truth:
            raise KeyError(f"image {image_id} ({shard} row {row}): not in the ground-truth table")
        masks = rasterise(truth[(shard, row)], (width, height), config.prompts, side)
        values = mask_grids(masks, boxes[image_id], (width, height), config.image_grid, config.view_grid)
        coverage += values["image_mask"].astype(np.float32).mean(axis=(-2, -1))
        writer.add(cache_row, values)
    mean = coverage / max(len(jobs), 1)
    return {
        "images": len(jobs),
        "seconds": round(time.perf_counter() - started, 2),
        **{f"coverage/{p}": round(float(c), 4) for p, c in zip(config.prompts, mean, strict=True)},
    }
