"""The view plan: per image, the boxes (in displayed full-resolution pixels) the backbone looks at.

Roadwork objects are often small in a 12 MP photo; a single global view at 512 px shrinks a cone to a
few pixels. So each image gets 1 global view, a grid of overlapping tiles that covers every pixel, a
centred square and a right-edge square (the kerb side of the road in right-hand traffic, where works
usually sit). The boxes depend only on the image's width/height and the config, so they are computed
once per distinct size.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

PLAN_FILE = "plan.parquet"
META_FILE = "plan.json"
BOX_COLUMNS = ("x0", "y0", "x1", "y1")
# Canonical sizes whose boxes fingerprint the box rule itself (independent of which images exist).
_RULE_SIZES = ((1920, 1080), (4032, 3024), (3024, 4032), (224, 224), (17, 9), (1, 1))
SMALL_RULES = ("tiles", "half", "global")


@dataclasses.dataclass(frozen=True)
class SmallSide:
    """The key of `views:` that tells a small image (a validator's 224 px query) from a full-size one."""

    small_side: int  # an image whose longer side is at most this is small


@dataclasses.dataclass(frozen=True)
class ViewsConfig:
    """params.yaml `views:`."""

    grid: int  # grid x grid tiles ...
    overlap: float  # ... overlapping by this fraction of a tile, covering the whole image
    small_side: int = 0  # an image whose longer side is at most this is "small" (a 224 px validator
    # challenge); 0: no image is
    small_rule: str = "tiles"  # views of a small image: tiles (the same rule as any image) | half
    # (the grid's tiles at half the image's side, a 2x2 grid's tile size, overlapping to keep every slot
    # in its place) | global (every view is the whole image: no upsampled tiles)
    trim_bands: bool = False  # views of a small image inside its letterbox bands, when it has any
    # (`views.crops.content_box`: the validator's April 2026 protocol pads the frame with black)

    def __post_init__(self) -> None:
        if isinstance(self.grid, bool) or not isinstance(self.grid, int) or self.grid < 1:
            raise ValueError(f"views.grid: expected an int >= 1, got {self.grid!r}")
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"views.overlap: expected a fraction in [0, 1), got {self.overlap!r}")
        if self.small_rule not in SMALL_RULES or self.small_side < 0:
            raise ValueError(
                f"views.small_rule={self.small_rule!r}, small_side={self.small_side}: expected one of "
                f"{SMALL_RULES} and a side >= 0"
            )


def n_views(config: ViewsConfig) -> int:
    """Views per image: global + grid² tiles + centre + right."""
    return 1 + config.grid**2 + 2


def view_names(config: ViewsConfig) -> list[str]:
    """Names in view order: global, tile_<row>_<col> (row-major), centre, right."""
    tiles = [f"tile_{r}_{c}" for r in range(config.grid) for c in range(config.grid)]
    return ["global", *tiles, "centre", "right"]


def _tile_edges(length: int, grid: int, overlap: float) -> tuple[np.ndarray, np.ndarray]:
    """Start/end (half-open) of `grid` overlapping tiles along one axis, covering [0, length)."""
    tile = length / (grid - (grid - 1) * overlap)
    stride = tile * (1.0 - overlap)
    starts = np.floor(np.arange(grid) * stride + 0.5)
    ends = np.floor(np.arange(grid) * stride + tile + 0.5)
    # Rounding is monotone and stride <= tile, so start[i+1] <= end[i]: no gap. The clamps below keep
    # every tile at least one pixel wide on tiny images without opening a gap.
    starts = np.minimum(starts, length - 1)
    ends[-1] = length
    ends = np.maximum(ends, starts + 1)
    return starts.astype(np.int64), ends.astype(np.int64)


def view_boxes(width: int, height: int, config: ViewsConfig) -> np.ndarray:
    """int32 [V, 4] boxes (x0, y0, x1, y1), half-open, in displayed pixels, in `view_names` order."""
    for name, value in (("width", width), ("height", height)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"view_boxes: {name} must be an int >= 1, got {value!r}")
    width, height = int(width), int(height)
    small = max(width, height) <= config.small_side
    if small and config.small_rule == "global":
        return np.tile(np.array([[0, 0, width, height]], dtype=np.int32), (n_views(config), 1))
    overlap = config.overlap
    if small and config.small_rule == "half" and config.grid > 1:
        # A tile of side L / (grid - (grid - 1) * overlap) is L / 2 at this overlap.
        overlap = (config.grid - 2) / (config.grid - 1)
    xs0, xs1 = _tile_edges(width, config.grid, overlap)
    ys0, ys1 = _tile_edges(height, config.grid, overlap)
    side = min(width, height)
    cx0, cy0 = (width - side) // 2, (height - side) // 2
    boxes = [(0, 0, width, height)]
    boxes += [(xs0[c], ys0[r], xs1[c], ys1[r]) for r in range(config.grid) for c in range(config.grid)]
    boxes.append((cx0, cy0, cx0 + side, cy0 + side))
    boxes.append((width - side, cy0, width, cy0 + side))
    return np.asarray(boxes, dtype=np.int32)


def build_plan(index: pl.DataFrame, config: ViewsConfig) -> pl.DataFrame:
    """One row per (image, view): image_id, view, name, x0, y0, x1, y1, in index order."""
    missing = [c for c in ("image_id", "width", "height") if c not in index.columns]
    if missing:
        raise ValueError(f"build_plan: index lacks column(s) {missing}")
    _check_sizes(index)
    ids = index["image_id"].cast(pl.String)
    if ids.is_duplicated().any():
        dup = ids.filter(ids.is_duplicated()).first()
        raise ValueError(f"build_plan: image_id {dup!r} appears more than once in the index")
    v = n_views(config)
    boxes = np.zeros((0, 4), dtype=np.int32)
    if len(index):
        size = np.stack([index["width"].to_numpy(), index["height"].to_numpy()], axis=1).astype(np.int64)
        sizes, inverse = np.unique(size, axis=0, return_inverse=True)
        per_size = np.stack([view_boxes(int(w), int(h), config) for w, h in sizes])
        boxes = per_size[inverse.reshape(-1)].reshape(-1, 4)
    columns: dict[str, Any] = {
        "image_id": pl.Series("image_id", np.repeat(ids.to_numpy(), v), dtype=pl.String),
        "view": pl.Series("view", np.tile(np.arange(v), len(index)), dtype=pl.Int8),
        "name": pl.Series("name", view_names(config) * len(index), dtype=pl.String),
    }
    for i, col in enumerate(BOX_COLUMNS):
        columns[col] = pl.Series(col, boxes[:, i], dtype=pl.Int32)
    return pl.DataFrame(columns)


def _check_sizes(index: pl.DataFrame) -> None:
    """Every row needs a positive width and height; name the first offending image."""
    for col in ("image_id", "width", "height"):
        nulls = index[col].is_null()
        if nulls.any():
            row = int(nulls.arg_max())
            raise ValueError(f"build_plan: index row {row} has a null {col}")
    bad = (index["width"] < 1) | (index["height"] < 1)
    if bad.any():
        row = int(bad.arg_max())
        r = index.row(row, named=True)
        raise ValueError(
            f"build_plan: index row {row} (image_id {r['image_id']!r}) has size "
            f"{r['width']}x{r['height']}; width and height must be >= 1"
        )


def plan_fingerprint(plan: pl.DataFrame) -> str:
    """sha256 over image ids, view numbers and boxes, in plan order."""
    h = hashlib.sha256()
    for value in plan["image_id"].to_list():
        h.update(value.encode())
        h.update(b"\0")
    h.update(plan["view"].to_numpy().astype("<i1").tobytes())
    h.update(plan.select(BOX_COLUMNS).to_numpy().astype("<i4").tobytes())
    return h.hexdigest()


def rule_fingerprint(config: ViewsConfig) -> str:
    """sha256 of the boxes the rule gives a fixed set of sizes: stable when images are added."""
    digest = hashlib.sha256(json.dumps(view_names(config)).encode())
    digest.update(b"trim_bands" if config.trim_bands else b"")  # which pixels the boxes are laid on
    for width, height in _RULE_SIZES:
        digest.update(view_boxes(width, height, config).astype("<i4").tobytes())
    return digest.hexdigest()


def write_plan(plan: pl.DataFrame, directory: str | Path, config: ViewsConfig) -> dict[str, Any]:
    """Write `plan.parquet` and `plan.json` (fingerprints, views, config); return the metadata."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta = {
        "fingerprint": plan_fingerprint(plan),
        "rule_fingerprint": rule_fingerprint(config),
        "n_views": n_views(config),
        "names": view_names(config),
        "images": plan["image_id"].n_unique(),
        "config": dataclasses.asdict(config),
    }
    plan.write_parquet(directory / PLAN_FILE)
    (directory / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def read_plan(directory: str | Path) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Read a written plan; refuses one whose boxes no longer match the recorded fingerprint."""
    directory = Path(directory)
    plan_path, meta_path = directory / PLAN_FILE, directory / META_FILE
    for path in (plan_path, meta_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: view plan not found (run the `views` stage)")
    plan = pl.read_parquet(plan_path)
    meta = json.loads(meta_path.read_text())
    found = plan_fingerprint(plan)
    if found != meta.get("fingerprint"):
        raise ValueError(
            f"{plan_path}: fingerprint {found[:12]} does not match {meta_path} "
            f"({str(meta.get('fingerprint'))[:12]}); the plan files are out of step, re-run `views`"
        )
    return plan, meta


def boxes_by_image(plan: pl.DataFrame) -> dict[str, np.ndarray]:
    """image_id -> int32 [V, 4] boxes in view order."""
    if plan.is_empty():
        return {}
    v = int(plan["view"].max()) + 1
    plan = plan.sort(["image_id", "view"], maintain_order=True)
    ids = plan["image_id"].to_numpy()
    views = plan["view"].to_numpy()
    if len(plan) % v or not np.array_equal(views, np.tile(np.arange(v), len(plan) // v)):
        counts = plan.group_by("image_id").len().filter(pl.col("len") != v)
        first = counts["image_id"].first() if len(counts) else ids[0]
        raise ValueError(f"view plan: image {first!r} does not have exactly views 0..{v - 1}")
    boxes = plan.select(BOX_COLUMNS).to_numpy().astype(np.int32).reshape(-1, v, 4)
    return dict(zip(ids[::v].tolist(), boxes, strict=True))
