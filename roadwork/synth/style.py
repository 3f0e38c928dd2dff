"""The synthetic world's second rendering style: the same scenes re-drawn, as an image-to-image
diffusion model re-draws a photo (a stand-in for the SDXL half of a StreetVision validator's queries).

A style keeps what is in the scene (every object, its place and kind) and changes how it looks:
- object renderings: every shape of an object gets a dark outline (an illustration's ink line);
- texture: the finished frame is smoothed by an edge-preserving filter (flat, painted regions, no
  sensor noise), then given a low-frequency brush texture and a vignette. A frame taller than
  `PAINT_HEIGHT` is painted at a whole fraction of its size and scaled back: the filter's cost grows
  with the square of its footprint, and a validator's challenge sees the frame at 224 px anyway;
- palette: the whole frame's hues rotated, saturation scaled and tinted, so cones stay cone-shaped but
  not always the photo's orange.
Each unit draws its own style from its own generator, so the re-drawn world is as varied as the
real one and entirely reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

PAINT_HEIGHT = 400  # frames taller than this are painted at a whole fraction of their size


@dataclass(frozen=True)
class Style:
    """How one unit is re-drawn."""

    hue_shift: float  # fraction of the colour wheel added to every hue
    saturation: float  # gain on every saturation
    tint: tuple[float, float, float]  # per-channel gain after the colour map
    outline: float  # ink line width as a fraction of the frame height (0: none)
    smooth: float  # strength of the edge-preserving smoothing, 0-1
    texture: float  # amplitude of the brush texture (relative brightness)

    def ink(self, height: int) -> int:
        """Outline width in pixels for a frame `height` pixels tall."""
        return max(1, round(self.outline * height))


def draw_style(rng: np.random.Generator) -> Style:
    """A random style."""
    return Style(
        hue_shift=float(rng.uniform(-0.07, 0.07)),
        saturation=float(rng.uniform(0.8, 1.5)),
        tint=tuple(float(t) for t in rng.uniform(0.85, 1.1, 3)),
        outline=float(rng.uniform(0.002, 0.005)),
        smooth=float(rng.uniform(0.4, 1.0)),
        texture=float(rng.uniform(0.04, 0.1)),
    )


def paint(image: np.ndarray, smooth: float) -> np.ndarray:
    """The edge-preserving smoothing of a uint8 [H, W, 3] frame: a bilateral filter whose footprint is
    ~1.2 % of the frame height, run at 1/k of the size (k the smallest whole factor that brings the
    height to `PAINT_HEIGHT` or less) with the footprint scaled alike, then resized back."""
    h, w = image.shape[:2]
    k = -(-h // PAINT_HEIGHT)  # ceil: 1 for a 270 px video frame, 2 for a 756 px phone photo
    small = image if k == 1 else cv2.resize(image, (w // k, h // k), interpolation=cv2.INTER_AREA)
    sigma = 20 + 60 * smooth
    d = max(3, round(0.012 * h / k) | 1)
    out = cv2.bilateralFilter(small, d=d, sigmaColor=sigma, sigmaSpace=sigma / 8 / k)
    return out if k == 1 else cv2.resize(out, (w, h), interpolation=cv2.INTER_LINEAR)


def finish(frame: np.ndarray, style: Style, rng: np.random.Generator) -> np.ndarray:
    """A rendered float32 [H, W, 3] frame in 0-255, painted over: smoothed, textured, vignetted."""
    h, w = frame.shape[:2]
    image = paint(np.clip(frame, 0, 255).astype(np.uint8), style.smooth)
    coarse = rng.standard_normal((max(2, h // 24), max(2, w // 24), 1)).astype(np.float32)
    brush = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)[..., None]
    yy = np.arange(h, dtype=np.float32)[:, None]  # broadcast, not a full grid: the same values
    xx = np.arange(w, dtype=np.float32)[None, :]
    radius = ((xx / w - 0.5) ** 2 + (yy / h - 0.5) ** 2)[..., None]
    shade = (1.0 + style.texture * brush) * (1.0 - 0.35 * radius)
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV_FULL).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + 256 * style.hue_shift) % 256
    hsv[..., 1] = np.clip(hsv[..., 1] * style.saturation, 0, 255)
    graded = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB_FULL).astype(np.float32)
    graded *= shade
    graded *= np.float32(style.tint)
    return np.clip(graded, 0, 255, out=graded)
