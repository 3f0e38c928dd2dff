"""Cut the planned views out of an image: decode once at the smallest sufficient scale, crop, resize.

JPEG decode dominates the CPU cost of extraction, so the image is decoded at the coarsest 1/2, 1/4 or
1/8 reduction that still leaves every view at least `side` pixels wide and tall. Each view is then
resized from a fractional source box (no intermediate crop copy) with PIL's antialiasing filters:
PIL scales the filter support with the reduction factor, so shrinking a 1344 px tile to 112 px
averages instead of aliasing (unlike cv2 INTER_LINEAR / INTER_LANCZOS4 when shrinking).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from roadwork.data.images import decode

# PIL first shrinks by an integer factor with a box filter (fast), then resamples the last <= 2x
# bilinearly; within a fraction of a grey level of an exact bilinear resample, at a fraction of the cost.
REDUCING_GAP = 2.0
RESAMPLE = Image.Resampling.BILINEAR


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
    out = np.empty((len(boxes), side, side, 3), dtype=np.uint8)
    for v, (x0, y0, x1, y1) in enumerate(src.tolist()):
        view = image.resize((side, side), RESAMPLE, box=(x0, y0, x1, y1), reducing_gap=REDUCING_GAP)
        out[v] = np.asarray(view)
    return out


def load_views(
    data: bytes, boxes: np.ndarray, side: int, *, size: tuple[int, int] | None = None
) -> np.ndarray:
    """Decode `data` at the scale the boxes need and cut the views: uint8 [V, side, side, 3].

    `size`, the displayed (width, height) the boxes were planned for, is checked against the image
    when given, so a plan made for another image fails loudly instead of cutting the wrong pixels.
    """
    image, scale = decode(data, min_side_scale=required_scale(boxes, side))
    if size is not None:
        expected = (math.ceil(size[0] * scale - 1e-9), math.ceil(size[1] * scale - 1e-9))
        if image.size != expected:
            raise ValueError(
                f"load_views: image decodes to {image.width}x{image.height} at scale {scale:.4g}, "
                f"expected {expected[0]}x{expected[1]} for a planned size of {size[0]}x{size[1]}"
            )
    return cut_views(image, boxes, scale, side)
