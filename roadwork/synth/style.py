"""The synthetic world's second rendering style: the same scenes re-drawn, as an image-to-image
diffusion model re-draws a photo (a stand-in for the SDXL half of a StreetVision validator's queries).

A style keeps what is in the scene (every object, its place and kind) and changes how it looks:
- object renderings: every shape of an object gets a dark outline (an illustration's ink line);
- texture: the finished frame is smoothed by an edge-preserving filter (flat, painted regions, no
  sensor noise), then given a low-frequency brush texture and a vignette;
- palette: the whole frame's hues rotated, saturation scaled and tinted, so cones stay cone-shaped but
  not always the photo's orange.
Each unit draws its own style from its own generator, so the re-drawn world is as varied as the
real one and entirely reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


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


def finish(frame: np.ndarray, style: Style, rng: np.random.Generator) -> np.ndarray:
    """A rendered float32 [H, W, 3] frame in 0-255, painted over: smoothed, textured, vignetted."""
    h, w = frame.shape[:2]
    image = np.clip(frame, 0, 255).astype(np.uint8)
    sigma = 20 + 60 * style.smooth
    image = cv2.bilateralFilter(image, d=max(3, round(0.012 * h) | 1), sigmaColor=sigma, sigmaSpace=sigma / 8)
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
