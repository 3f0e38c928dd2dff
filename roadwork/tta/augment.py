"""Test-time augmentations of a whole image, each cut into the views of the view rule.

An augmentation is a small, deterministic spec (no randomness: the same image and spec always give the
same pixels, so its backbone features can be cached by (image, spec)):

- geometry: a window of 1/scale of the image, centred at (0.5 + dx, 0.5 + dy) of its width / height, then
  optionally mirrored. scale > 1 zooms in; scale < 1 zooms out and the border is reflected, as the
  training augmentations do. The augmented image is the window, so the view rule (`view_boxes`) runs on
  the window's size: its global view is the whole window, its tiles tile the window.
- colour, pointwise on the cut views: saturation (blend with the luma), contrast about mid-grey,
  brightness. Pointwise colour commutes with cropping and resizing, so applying it to the 12 small views
  instead of the full image gives the same pixels up to rounding, at a fraction of the cost.

Views are cut straight from the image decoded once at a reduced scale (as `extract` does), the boxes
mapped into the window; a mirrored image's views are the mirrored views of the mirrored boxes. With the
identity spec this is exactly `roadwork.views.crops.load_views`, so the identity augmentation reproduces
the clean cached features.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from roadwork.data.images import decode
from roadwork.views.crops import cut_views, required_scale
from roadwork.views.plan import ViewsConfig, view_boxes

LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601, as PIL's "L" conversion


@dataclass(frozen=True)
class AugSpec:
    """One test-time augmentation; every field at its default is the identity."""

    flip: bool = False  # mirror the window horizontally
    scale: float = 1.0  # zoom: the window is 1/scale of the image (> 1 zooms in; < 1 reflects borders)
    dx: float = 0.0  # window centre shift, as a fraction of the image width
    dy: float = 0.0  # ... and of its height
    brightness: float = 1.0  # pixel values times this
    contrast: float = 1.0  # distance from mid-grey (128) times this
    saturation: float = 1.0  # 0 grey, 1 unchanged, > 1 more colourful

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name != "flip" and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise ValueError(f"augmentation field {f.name}={value!r}: expected a number")
        if not 0.5 <= self.scale <= 2.0:
            raise ValueError(f"augmentation {self.key()}: scale={self.scale} outside [0.5, 2]")
        if abs(self.dx) > 0.25 or abs(self.dy) > 0.25:
            raise ValueError(f"augmentation {self.key()}: |dx|, |dy| must be <= 0.25")
        for name in ("brightness", "contrast"):
            if not 0.0 < getattr(self, name) <= 4.0:
                raise ValueError(f"augmentation {self.key()}: {name}={getattr(self, name)} outside (0, 4]")
        if not 0.0 <= self.saturation <= 4.0:
            raise ValueError(f"augmentation {self.key()}: saturation={self.saturation} outside [0, 4]")

    def changes(self) -> dict[str, float | bool]:
        """The fields that differ from the identity (what names and fingerprints the spec)."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != f.default
        }

    def key(self) -> str:
        """Readable canonical name, e.g. `flip,scale=1.1`; `identity` for the identity."""
        parts = [k if v is True else f"{k}={v:g}" for k, v in self.changes().items()]
        return ",".join(parts) or "identity"

    def digest(self) -> str:
        """Stable short hash of the non-default fields (adding a field with a neutral default keeps it)."""
        canonical = json.dumps({k: float(v) for k, v in self.changes().items()}, sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    @property
    def geometric(self) -> bool:
        return self.flip or self.scale != 1.0 or self.dx != 0.0 or self.dy != 0.0


def grid_specs(
    shifts: Iterable[float], scales: Iterable[float], flips: Iterable[bool] = (False, True)
) -> list[AugSpec]:
    """Every (dx, dy) in shifts x shifts, every scale and flip: the plan's 96-way set is
    `grid_specs((-0.03, -0.01, 0.01, 0.03), (0.9, 1.0, 1.1))` (16 crops x 3 scales x 2 flips)."""
    shifts = list(shifts)
    return [
        AugSpec(flip=f, scale=s, dx=x, dy=y)
        for f, s, y, x in itertools.product(list(flips), list(scales), shifts, shifts)
    ]


def window_boxes(width: int, height: int, spec: AugSpec, views: ViewsConfig) -> np.ndarray:
    """float [V, 4] boxes, in the original image's displayed pixels, of the augmented image's views.

    Boxes may reach outside the image (zoom-out, shifts): those pixels are reflected. A mirrored spec
    gives the mirrored boxes; `augmented_views` mirrors their pixels back.
    """
    aw = max(1, round(width / spec.scale))
    ah = max(1, round(height / spec.scale))
    boxes = view_boxes(aw, ah, views).astype(np.float64)
    if spec.flip:
        boxes[:, [0, 2]] = aw - boxes[:, [2, 0]]
    ox = width * (0.5 + spec.dx) - aw / 2.0
    oy = height * (0.5 + spec.dy) - ah / 2.0
    return boxes + np.array([ox, oy, ox, oy])


def _recolour(views: np.ndarray, spec: AugSpec) -> np.ndarray:
    """Pointwise colour change of uint8 [V, S, S, 3] views (the identity returns them untouched)."""
    if spec.brightness == spec.contrast == spec.saturation == 1.0:
        return views
    x = views.astype(np.float32)
    if spec.saturation != 1.0:
        grey = (x @ LUMA)[..., None]
        x = grey + spec.saturation * (x - grey)
    if spec.contrast != 1.0:
        x = (x - 128.0) * spec.contrast + 128.0
    x = x * spec.brightness
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _cut(image: Image.Image, scale: float, boxes: np.ndarray, side: int) -> np.ndarray:
    """Cut displayed-pixel `boxes` from `image` (decoded at `scale`), reflecting outside the image."""
    src = boxes * scale
    margin_x = math.ceil(max(0.0, -src[:, 0].min(), src[:, 2].max() - image.width))
    margin_y = math.ceil(max(0.0, -src[:, 1].min(), src[:, 3].max() - image.height))
    if margin_x or margin_y:
        margin_x, margin_y = margin_x + 1, margin_y + 1  # keep every start strictly inside the padding
        padded = cv2.copyMakeBorder(
            np.asarray(image), margin_y, margin_y, margin_x, margin_x, cv2.BORDER_REFLECT_101
        )
        image = Image.fromarray(padded)
        boxes = boxes + np.array([margin_x, margin_y, margin_x, margin_y]) / scale
    return cut_views(image, boxes, scale, side)


class ImageViews:
    """One image's augmented views; decodes the image once per distinct decode scale the specs need."""

    def __init__(self, data: bytes, size: tuple[int, int], views: ViewsConfig, side: int):
        self.data, self.size, self.views, self.side = data, size, views, side
        self._decoded: dict[float, tuple[Image.Image, float]] = {}

    def _image(self, need: float) -> tuple[Image.Image, float]:
        if need not in self._decoded:
            image, scale = decode(self.data, min_side_scale=need)
            expected = (math.ceil(self.size[0] * scale - 1e-9), math.ceil(self.size[1] * scale - 1e-9))
            if image.size != expected:
                raise ValueError(
                    f"image decodes to {image.width}x{image.height} at scale {scale:.4g}, expected "
                    f"{expected[0]}x{expected[1]} for its indexed size {self.size[0]}x{self.size[1]}"
                )
            self._decoded[need] = (image, scale)
        return self._decoded[need]

    def __call__(self, spec: AugSpec) -> np.ndarray:
        """uint8 [V, side, side, 3]: the views of the image augmented by `spec`."""
        boxes = window_boxes(*self.size, spec, self.views)
        sizes = boxes[:, 2:] - boxes[:, :2]  # boxes may start outside the image: only sizes matter here
        image, scale = self._image(required_scale(np.concatenate([0 * sizes, sizes], axis=1), self.side))
        views = _cut(image, scale, boxes, self.side)
        if spec.flip:
            views = np.ascontiguousarray(views[:, :, ::-1])
        return _recolour(views, spec)
