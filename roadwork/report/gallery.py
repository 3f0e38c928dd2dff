"""The failure gallery: thumbnails of the worst errors with their view boxes, view gates and SAM masks.

Images are decoded from the raw shards at the reduced JPEG scale a thumbnail needs. Gates are
recomputed by a chosen full-head member on the cached features of just these images (the head's GAFM
pooling weights over the views it kept; pruned views have none). Masks, when a mask cache exists,
are the coarse per-view SAM 3 grids pasted back into image coordinates, coloured by prompt.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
import zarr
from PIL import Image, ImageDraw, ImageFont

from roadwork.config import Paths
from roadwork.data.images import ShardReader, decode
from roadwork.ensemble.choose import full_heads
from roadwork.features.cache import ExtractConfig, FeatureCache, RowCache, StaleCacheError, open_features
from roadwork.report.analysis import worst_errors
from roadwork.report.figures import data_uri
from roadwork.train.checkpoint import SavedHead, load_head
from roadwork.views.plan import boxes_by_image

JPEG_QUALITY = 80
MASK_ALPHA = 0.6  # overlay opacity at full mask coverage
MASK_FLOOR = 0.05  # coverage below this is not drawn (keeps the photo readable)
PROMPT_COLOURS = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240))
TILE_COLOUR, CENTRE_COLOUR, RIGHT_COLOUR = (255, 225, 25), (70, 240, 240), (240, 50, 230)


@dataclass(frozen=True)
class GalleryItem:
    """One failure: what it is, its thumbnail, and (when available) gates and mask prompts."""

    kind: str  # "false positive" | "false negative"
    image_id: str
    label: int
    prob: float
    info: dict[str, str]  # city, weather, daytime, ... for the caption
    thumbnail: str  # JPEG data URI with the view boxes (and masks) drawn
    gates: list[float | None] | None  # per view in plan order; None = pruned; whole field None = no gates
    masks: list[tuple[str, str, float]] | None  # (prompt, CSS colour, covered share of the image)


@dataclass(frozen=True)
class GateSource:
    """A full-head member and the caches it reads: enough to recompute view gates for a few images."""

    head: SavedHead
    cache: FeatureCache
    text_path: Path


def view_gates(source: GateSource, rows: pl.DataFrame, n_views: int) -> np.ndarray:
    """float [n, n_views] GAFM pooling weights of `rows` (index rows), NaN for views the head pruned.

    Fed exactly like training's clean path: copy 0 of the cached features, the member's tokens and
    views, its vocabulary for the metadata.
    """
    head = source.head
    table = head.table(rows, cache=source.cache, text_path=source.text_path)
    with torch.no_grad():
        out = head.model(table.batch(np.arange(len(rows))))
    used_views = np.array(head.views if head.views is not None else np.arange(n_views))
    gates = np.full((len(rows), n_views), np.nan)
    index = used_views[out["view_index"].cpu().numpy()]
    np.put_along_axis(gates, index, out["view_gates"].float().cpu().numpy(), axis=1)
    return gates


def gates_by_image(source: GateSource, rows: pl.DataFrame, n_views: int) -> dict[str, np.ndarray]:
    """image_id -> [n_views] gates (NaN = pruned) for index `rows`."""
    if rows.is_empty():
        return {}
    return dict(zip(rows["image_id"].to_list(), view_gates(source, rows, n_views), strict=True))


def masks_if_present(
    path: str, image_ids: list[str], rule_fingerprint: str
) -> tuple[tuple[dict, list[str]] | None, str]:
    """The masks of `image_ids` when a mask cache exists at `path`, else None; and a note for the page.

    `rule_fingerprint` is the view plan's: masks cut with another view rule would sit in the wrong boxes.
    """
    if not Path(path).exists():
        return None, f"{path} does not exist (the masks stage has not run): no SAM 3 masks shown."
    masks, prompts = read_view_masks(Path(path), image_ids, rule_fingerprint)
    note = f"SAM 3 masks from {path} ({len(masks)} of {len(image_ids)} images cached), coloured by prompt."
    return (masks, prompts), note


def read_view_masks(
    path: Path, image_ids: list[str], rule_fingerprint: str
) -> tuple[dict[str, np.ndarray], list[str]]:
    """image_id -> view_masks [V, P, G, G] for the ids the mask cache holds (finished rows), and prompts."""
    cache = RowCache(Path(path), zarr.open_group(Path(path), mode="r"))
    stored = cache.group.attrs.get("view_rule_fingerprint")
    if stored != rule_fingerprint:
        raise StaleCacheError(
            f"{path}: masks were cut with view rule {str(stored)[:12]}, the plan has "
            f"{rule_fingerprint[:12]}; re-run the masks stage"
        )
    prompts = [str(p) for p in cache.group.attrs.get("prompts", [])]
    present = [i for i in image_ids if i in cache.row_of]
    done = cache.done_mask(np.array([cache.row_of[i] for i in present], dtype=np.int64))
    present = [i for i, ok in zip(present, done, strict=True) if ok]
    if not present:
        return {}, prompts
    masks = cache.read_array("view_masks", present).astype(np.float32)
    if masks.ndim != 5 or (prompts and masks.shape[2] != len(prompts)):
        raise ValueError(
            f"{path}: view_masks has shape {masks.shape}; expected [N, V, P={len(prompts)}, G, G]"
        )
    return dict(zip(present, masks, strict=True)), prompts


def _overlay(image: Image.Image, boxes: np.ndarray, masks: np.ndarray, scale: float) -> np.ndarray:
    """Paint the per-view mask grids onto the image; returns the covered share per prompt."""
    w, h = image.size
    canvas = np.zeros((masks.shape[1], h, w), dtype=np.float32)
    for box, grids in zip(boxes, masks, strict=True):
        x0, y0 = int(box[0] * scale), int(box[1] * scale)
        x1, y1 = max(x0 + 1, min(w, round(box[2] * scale))), max(y0 + 1, min(h, round(box[3] * scale)))
        for p, grid in enumerate(grids):
            # Nearest: a grid cell holds the covered fraction of its area, constant over the cell.
            up = np.asarray(Image.fromarray(grid).resize((x1 - x0, y1 - y0), Image.Resampling.NEAREST))
            np.maximum(canvas[p, y0:y1, x0:x1], up, out=canvas[p, y0:y1, x0:x1])
    strength = canvas.max(axis=0)
    colour = np.array([PROMPT_COLOURS[p % len(PROMPT_COLOURS)] for p in range(len(canvas))], dtype=np.float32)
    alpha = (MASK_ALPHA * np.where(strength > MASK_FLOOR, strength, 0.0))[..., None]
    pixels = np.asarray(image, dtype=np.float32)
    blended = (1 - alpha) * pixels + alpha * colour[canvas.argmax(axis=0)]
    image.paste(Image.fromarray(np.clip(np.rint(blended), 0, 255).astype(np.uint8)))
    return (canvas > MASK_FLOOR).mean(axis=(1, 2))


def _label(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, font: Any, anchor: str) -> None:
    """Text on a dark box, readable on any photo."""
    box = draw.textbbox(xy, text, font=font, anchor=anchor)
    draw.rectangle((box[0] - 2, box[1] - 1, box[2] + 2, box[3] + 1), fill=(0, 0, 0))
    draw.text(xy, text, fill=(255, 255, 255), font=font, anchor=anchor)


def _draw_views(image: Image.Image, boxes: np.ndarray, scale: float, gates: np.ndarray | None) -> None:
    """Boxes of the plan (global, grid tiles, centre, right) and, with gates, each view's weight in %."""
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=11)
    w, h = image.size
    n_tiles = len(boxes) - 3
    for v, box in enumerate(boxes):
        x0, y0, x1, y1 = (float(c) * scale for c in box)
        x1, y1 = min(x1, w) - 1, min(y1, h) - 1
        colour = TILE_COLOUR if 1 <= v <= n_tiles else CENTRE_COLOUR if v == n_tiles + 1 else RIGHT_COLOUR
        if v > 0:  # the global view is the whole frame
            draw.rectangle((x0, y0, x1, y1), outline=colour, width=1)
        if gates is None or np.isnan(gates[v]):  # no label on views the head pruned
            continue
        text = f"{100 * gates[v]:.0f}%"
        if v == 0:
            _label(draw, (3, 3), f"G {text}", font, "la")
        elif v <= n_tiles:
            _label(draw, ((x0 + x1) / 2, (y0 + y1) / 2), text, font, "mm")
        elif v == n_tiles + 1:
            _label(draw, ((x0 + x1) / 2, y1 - 3), f"C {text}", font, "md")
        else:
            _label(draw, (x1 - 3, y1 - 3), f"R {text}", font, "rd")


def thumbnail(
    data: bytes,
    boxes: np.ndarray,
    width: int,
    *,
    gates: np.ndarray | None = None,
    masks: np.ndarray | None = None,
) -> tuple[str, np.ndarray | None]:
    """JPEG data URI of the image `width` px wide with its views drawn; the masks' covered shares."""
    full_w = int(boxes[0][2])  # the global view is the whole displayed image
    image, _ = decode(data, min_side_scale=min(1.0, width / full_w))
    scale = width / full_w
    height = max(1, round(int(boxes[0][3]) * scale))
    image = image.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=2.0)
    shares = _overlay(image, boxes, masks, scale) if masks is not None else None
    _draw_views(image, boxes, scale, gates)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=JPEG_QUALITY)
    return data_uri(buffer.getvalue(), "image/jpeg"), shares


def _info(row: dict[str, Any]) -> dict[str, str]:
    text = row.get("scene_description") or ""
    return {
        "city": str(row["city"]),
        "weather": str(row["weather_tag"]),
        "daytime": str(row["daytime"]),
        "scene": str(row["scene_environment"]),
        "GPS": str(row["gps_cluster"]),
        "size": f"{row['width']}x{row['height']}",
        "description": text if len(text) <= 200 else text[:199] + "…",
    }


def build_gallery(
    errors: dict[str, pl.DataFrame],
    *,
    reader: ShardReader,
    boxes: dict[str, np.ndarray],
    width: int,
    gates: dict[str, np.ndarray] | None = None,
    masks: tuple[dict[str, np.ndarray], list[str]] | None = None,
) -> list[GalleryItem]:
    """Gallery items for `errors` (kind -> rows of `analysis.scored_frame`), in their order.

    `gates`: image_id -> [V] gates (NaN = pruned); `masks`: (image_id -> view_masks, prompts).
    """
    items = []
    for kind, frame in errors.items():
        for row in frame.iter_rows(named=True):
            image_id = row["image_id"]
            if image_id not in boxes:
                raise ValueError(f"view plan: no boxes for image_id {image_id!r}; re-run the views stage")
            gate = None if gates is None else gates.get(image_id)
            mask = None if masks is None else masks[0].get(image_id)
            uri, shares = thumbnail(
                reader.read(row["shard"], row["row"]), boxes[image_id], width, gates=gate, masks=mask
            )
            legend = None
            if shares is not None and masks is not None:
                legend = [
                    (
                        prompt,
                        "#{:02x}{:02x}{:02x}".format(*PROMPT_COLOURS[p % len(PROMPT_COLOURS)]),
                        float(shares[p]),
                    )
                    for p, prompt in enumerate(masks[1])
                ]
            items.append(
                GalleryItem(
                    kind=kind,
                    image_id=image_id,
                    label=int(row["label"]),
                    prob=float(row["prob"]),
                    info=_info(row),
                    thumbnail=uri,
                    gates=None if gate is None else [None if np.isnan(g) else float(g) for g in gate],
                    masks=legend,
                )
            )
    return items


def failure_gallery(
    test: pl.DataFrame,
    *,
    paths: Paths,
    extract: ExtractConfig,
    index: pl.DataFrame,
    views: tuple[pl.DataFrame, dict[str, Any]],
    chosen: list[str],
    threshold: float,
    count: int,
    width: int,
) -> tuple[list[GalleryItem], list[str]]:
    """The `count` worst false positives and false negatives of `test` (scored rows) with thumbnails
    `width` px wide, view gates (the best chosen full head) and masks (if cached); notes for the page.
    `views` is `read_plan(paths.views)`."""
    plan, plan_meta = views
    fp, fn = worst_errors(test, threshold, count)
    worst_ids = [*fp["image_id"], *fn["image_id"]]
    notes, gates = [], None
    members, _ = full_heads(Path(paths.heads), chosen)
    if not members:
        notes.append("No chosen member is a full head: no view gates to show.")
    else:
        source = GateSource(
            load_head(Path(paths.heads) / members[0]), open_features(paths, extract), Path(paths.text)
        )
        rows = index.filter(pl.col("image_id").is_in(worst_ids))
        gates = gates_by_image(source, rows, plan_meta["n_views"])
        notes.append(
            f"View gates: GAFM pooling weights of member {members[0]}, in % on the views it kept "
            "(pruned views have none)."
        )
    masks, masks_note = masks_if_present(paths.masks, worst_ids, plan_meta["rule_fingerprint"])
    items = build_gallery(
        {"false positive": fp, "false negative": fn},
        reader=ShardReader(Path(paths.raw)),
        boxes=boxes_by_image(plan.filter(pl.col("image_id").is_in(worst_ids))),
        width=width,
        gates=gates,
        masks=masks,
    )
    return items, [*notes, masks_note]
