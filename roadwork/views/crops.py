"""Cut the planned views out of an image: decode once at the smallest sufficient scale, crop, resize.

JPEG decode is the floor of the CPU cost of extraction, so the image is decoded at the coarsest 1/2,
1/4 or 1/8 reduction that still leaves every view at least `side` pixels wide and tall. Each view is
then resized straight from the decoded pixels (no copy of the image, no crop copy) by torch's uint8
antialiased bilinear kernel: it widens the filter with the reduction factor, as PIL's BILINEAR does
(outputs agree within a grey level), so shrinking a 1344 px tile to 112 px averages instead of
aliasing (unlike cv2 INTER_LINEAR / INTER_LANCZOS4), and it is 3-4x faster than PIL at side 512.
Boxes are snapped to whole decoded pixels (at most half a decoded pixel off the plan).
"""

from __future__ import annotations

import math
import warnings

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from roadwork.data.images import decode, decode_image, displayed_size, pixel_view
from roadwork.views.plan import ViewsConfig, view_boxes


def _check_boxes(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes)
    if boxes.ndim != 2 or boxes.shape[1] != 4 or len(boxes) == 0:
        raise ValueError(f"boxes: expected shape [V, 4] with V >= 1, got {boxes.shape}")
    sizes = boxes[:, 2:] - boxes[:, :2]
    if (sizes < 1).any() or (boxes[:, :2] < 0).any():
        bad = int(np.flatnonzero((sizes < 1).any(axis=1) | (boxes[:, :2] < 0).any(axis=1))[0])
        raise ValueError(f"boxes: view {bad} box {boxes[bad].tolist()} is empty or starts below 0")
    return boxes


def required_scale(boxes: np.ndarray, side: int) -> float:
    """Smallest decode scale at which every box is still >= `side` pixels wide and tall (at most 1)."""
    if side < 1:
        raise ValueError(f"required_scale: side must be >= 1, got {side}")
    boxes = _check_boxes(boxes)
    smallest = int((boxes[:, 2:] - boxes[:, :2]).min())
    return min(1.0, side / smallest)


def cut_views(image: Image.Image, boxes: np.ndarray, scale: float, side: int) -> np.ndarray:
    """uint8 [V, side, side, 3]: each full-resolution box, times `scale`, cut from `image` and resized."""
    boxes = _check_boxes(boxes)
    if image.mode != "RGB":
        raise ValueError(f"cut_views: expected an RGB image, got mode {image.mode}")
    src = boxes.astype(np.float64) * scale
    # The decoder rounds the reduced size up, so a box may end at most a pixel fraction inside it.
    over = (src[:, 2] > image.width + 1e-6) | (src[:, 3] > image.height + 1e-6)
    if over.any():
        v = int(np.flatnonzero(over)[0])
        raise ValueError(
            f"cut_views: view {v} box {boxes[v].tolist()} at scale {scale:.4g} falls outside the "
            f"decoded {image.width}x{image.height} image (plan and image sizes disagree)"
        )
    edges = np.clip(np.rint(src), 0, [image.width, image.height] * 2).astype(np.int64)
    edges[:, 2:] = np.maximum(edges[:, 2:], edges[:, :2] + 1)  # a box keeps at least one pixel
    with warnings.catch_warnings():  # read-only pixels: the tensor is only read
        warnings.simplefilter("ignore", UserWarning)
        # [1, 4, h, w] with channels-last strides: the layout of torch's vectorised uint8 kernel.
        pixels = torch.from_numpy(pixel_view(image)).permute(2, 0, 1)[None]
    out = np.empty((len(boxes), side, side, 3), dtype=np.uint8)
    for v, (x0, y0, x1, y1) in enumerate(edges.tolist()):
        # A contiguous crop (whole rows: a memcpy) puts the kernel on its fast path and makes its output
        # channels-last [side, side, 4]; cv2 drops the 4th byte with SIMD, where a strided copy would not.
        crop = pixels[..., y0:y1, x0:x1].contiguous(memory_format=torch.channels_last)
        view = F.interpolate(crop, size=(side, side), mode="bilinear", antialias=True)
        cv2.cvtColor(view[0].permute(1, 2, 0).numpy(), cv2.COLOR_RGBA2RGB, dst=out[v])
    return out


Source = bytes | Image.Image  # encoded image bytes, or an opened PIL image (a miner's `Image.open`)


def decode_source(source: Source, *, min_side_scale: float = 1.0) -> tuple[Image.Image, float]:
    """`decode` of image bytes or `decode_image` of an opened PIL image: the same pixels for the same
    JPEG either way (an unloaded image is decoded at the same reduced scale as its bytes would be)."""
    if isinstance(source, Image.Image):
        return decode_image(source, min_side_scale=min_side_scale)
    return decode(source, min_side_scale=min_side_scale)


def load_views(
    data: Source, boxes: np.ndarray, side: int, *, size: tuple[int, int] | None = None
) -> np.ndarray:
    """Decode `data` (bytes or an opened PIL image) at the scale the boxes need and cut the views:
    uint8 [V, side, side, 3].

    `size`, the displayed (width, height) the boxes were planned for, is checked against the image
    when given, so a plan made for another image fails loudly instead of cutting the wrong pixels.
    """
    image, scale = decode_source(data, min_side_scale=required_scale(boxes, side))
    if size is not None:
        expected = (math.ceil(size[0] * scale - 1e-9), math.ceil(size[1] * scale - 1e-9))
        if image.size != expected:
            raise ValueError(
                f"load_views: image decodes to {image.width}x{image.height} at scale {scale:.4g}, "
                f"expected {expected[0]}x{expected[1]} for a planned size of {size[0]}x{size[1]}"
            )
    return cut_views(image, boxes, scale, side)


# A letterboxed query (the validator's April 2026 protocol) is a frame centred on black bands. A band
# row (column) is one whose pixels are nearly all black: JPEG quality 75 leaves a few grey levels of
# ringing on black, and a rotated letterbox brings a corner of the frame into the band's edge rows.
BAND_LEVEL = 24  # a band pixel: every channel at most this
BAND_SHARE = 0.95  # a band row or column: at least this share of band pixels
MIN_BAND = 2  # a band on each side at least this thick (pixels), or no band: letterboxes are centred


def _band(dark_lines: np.ndarray) -> int:
    """How many lines from the start are band lines."""
    not_band = np.flatnonzero(~dark_lines)
    return len(dark_lines) if len(not_band) == 0 else int(not_band[0])


def content_box(pixels: np.ndarray) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of a uint8 [H, W, 3] image inside letterbox bands: black bands on both sides
    (top and bottom, or left and right) are cut off; an image without such a pair keeps its whole box."""
    dark = pixels.max(axis=2) <= BAND_LEVEL
    h, w = dark.shape
    box = [0, 0, w, h]
    for axis, (start, end) in ((1, (1, 3)), (0, (0, 2))):  # rows (top, bottom), then columns
        lines = dark.mean(axis=axis) >= BAND_SHARE
        first, last = _band(lines), _band(lines[::-1])
        if min(first, last) >= MIN_BAND and first + last < len(lines):
            box[start], box[end] = first, len(lines) - last
    return box[0], box[1], box[2], box[3]


def served_views(
    data: Source, *, views: ViewsConfig, side: int, size: tuple[int, int] | None = None
) -> np.ndarray:
    """uint8 `[V, side, side, 3]`: an image's views as the served model sees them, its boxes from its own
    displayed size (`size`, when the caller has read it already). `data` is the image's bytes or the
    image opened with PIL: the same views either way. A small image (a validator's 224 px query) with
    `views.trim_bands` is cut inside its letterbox bands (`content_box`), if it has any."""
    size = size or displayed_size(data)
    if views.trim_bands and max(size) <= views.small_side:
        image, _ = decode_source(data)  # small: a full decode costs nothing
        x0, y0, x1, y1 = content_box(np.asarray(image))
        boxes = view_boxes(x1 - x0, y1 - y0, views) + np.array([x0, y0, x0, y0], dtype=np.int32)
        return cut_views(image, boxes, 1.0, side)
    return load_views(data, view_boxes(*size, views), side, size=size)
