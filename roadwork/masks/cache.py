"""The mask cache: its config, its layout, how masks become its grids, and the checked reader.

Layout of `features/masks.zarr` (a `RowCache`, rows keyed by image id):
    image_mask   [N, P, M, M]     float16  fraction of each cell of the whole image covered, per prompt
    view_masks   [N, V, P, G, G]  float16  the same over each view box of the plan
    coverage     [N, V, P]        float32  fraction of each view covered, per prompt
    image_id [N], done [N]; attrs: the mask source's and view rule's fingerprints, prompts, thresholds, grids

Geometry: a source mask is stretched over the whole image, so pixel (r, c) of an h x w mask covers the
full-resolution box [c W/w, (c+1) W/w) x [r H/h, (r+1) H/h). Grid values are exact area fractions of
that piecewise-constant mask over equal cells of a box (whole image or view).

The cache is filled by SAM 3 (`roadwork.masks.fill`) or, on synthetic data, from the true
polygons (`roadwork.masks.truth`); the heads read it through `open_masks` and depend on this module
only, not on the model that filled it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from roadwork.config import Paths
from roadwork.data.schema import TRUTH_FILE
from roadwork.features.cache import RowCache
from roadwork.features.manifest import read_manifest
from roadwork.masks.config import MaskKey, MasksConfig
from roadwork.views.plan import read_plan

# Bump when the meaning of the stored masks changes (post-processing, geometry): old caches go stale.
MASKS_FORMAT = 1
RASTER_PER_CELL = 4  # true masks: raster pixels per coarse image-grid cell, along each axis


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


def expected_attrs(config: MaskKey, *, sam: dict[str, Any], plan_meta: dict[str, Any]) -> dict[str, Any]:
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


def truth_path(raw_root: Path) -> Path:
    """The true-polygon side table of a synthetic dataset; a clear error for data without one."""
    path = Path(raw_root) / TRUTH_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no ground-truth masks (masks.source=truth); only the synthetic data written by "
            "`synth` has them. Use masks.source=sam for real data."
        )
    return path


def source_manifest(config: MaskKey, *, sam_dir: Path, raw_root: Path) -> dict[str, Any]:
    """What the mask cache is built from, for its attrs: the saved SAM 3's manifest (checked against
    `masks.model`) or, with `masks.source: truth`, the true-polygon table's hash and raster size."""
    if config.source == "truth":
        digest = hashlib.sha256(truth_path(raw_root).read_bytes()).hexdigest()
        side = RASTER_PER_CELL * config.image_grid
        return {"source": "truth", "fingerprint": f"truth:{digest}", "input_size": [side, side]}
    manifest = read_manifest(Path(sam_dir), "sam")
    if manifest["source"] != config.model:
        raise ValueError(
            f"{sam_dir}: holds {manifest['source']!r} but masks.model is {config.model!r}; "
            "run `dvc repro sam` first"
        )
    return manifest


def open_masks(paths: Paths, config: MaskKey) -> MaskCache:
    """The mask cache for reading; refuses one built from another source, prompts, thresholds or views."""
    source = source_manifest(config, sam_dir=Path(paths.sam), raw_root=Path(paths.raw))
    _, plan_meta = read_plan(Path(paths.views))
    return MaskCache.open_checked(Path(paths.masks), expected_attrs(config, sam=source, plan_meta=plan_meta))
