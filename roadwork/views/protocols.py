"""What a StreetVision validator does to an image before a miner sees it, for each protocol it has used
(`shared` VALIDATOR.md). Every challenge ends as a JPEG of quality 75.

- `crop` (v0.2.4, January 2026), one level 0-3 per challenge:
  - level 0: the centred square of the short side (offsets rounded half to even, as torchvision's
    CenterCrop), resized to 224 x 224;
  - level 1: rotation by an angle uniform in [-20, 20] degrees (nearest neighbour, black outside the
    image, same canvas size), then a random resized *square* crop (area 0.2-1.0 of the rotated image,
    aspect exactly 1; torchvision's ten tries, then the centred square) resized to 224 x 224 (bilinear
    with antialias); no flip;
  - level 2: level 1, then each of saturation x0.4, contrast x0.85 and down-and-up scaling by 2,
    independently with probability 0.5;
  - level 3: level 1, then each of five distortions at strength 0, 1 or 2 (a third each; 0 = skipped):
    saturation 0.4 / 0.3, contrast 0.85 / 0.725, down-and-up scaling 2 / 3, Gaussian noise in YCbCr of
    variance 0.001 / 0.002, Gaussian blur with kernel 7 / 9 and sigma = kernel / 6.
- `letterbox` (April 2026): the whole frame scaled to fit 224 x 224 (the scaled size truncated to whole
  pixels, bilinear with antialias) and centred on black (an odd remainder goes right or down); levels
  1-3 rotate that 224 px image as above and distort it as above, without a crop.
- `native` (v0.4, May 2026): the image at its own size, no augmentation.

The distortions work on 8-bit pixels, as the validator's do: the image is truncated to uint8 before
each one and at the end. Saturation scales the chroma about neutral (Y + f (RGB - Y): Cb and Cr are
multiples of B - Y and R - Y); contrast multiplies the pixel values; the noise is the validator's in
effect: in BT.601 YCbCr, of standard deviation 255^2 / 219 sqrt(variance) on Y and 255^2 / 224
sqrt(variance) on Cb and Cr, in grey levels (its studio-range round trip scales the drawn noise so).
docs/decisions.md records these against the validator's published code.
"""

from __future__ import annotations

import hashlib
import io
import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial

import cv2
import numpy as np
import torch
from PIL import Image

from roadwork.data.images import decode

PROTOCOLS = ("crop", "letterbox", "native")
LEVELS = (0, 1, 2, 3)
SIZE = 224  # the output side of `crop` and `letterbox`
JPEG_QUALITY = 75  # the validator's JPEG quality (Pillow's default)
# Bump when a transform's output changes: cached validator-style copies are then rebuilt
# (3: square crops, letterbox and native, 8-bit truncation, the validator's noise scale).
TRANSFORMS_VERSION = 3
MAX_ANGLE = 20.0
CROP_AREA = (0.2, 1.0)
SATURATION = (0.4, 0.3)  # level 2 uses the first value, level 3 strength 1 / 2
CONTRAST = (0.85, 0.725)
RESCALE = (2, 3)
NOISE_VARIANCE = (0.001, 0.002)
NOISE_SCALE = (255 / 219, 255 / 224)  # noise std per sqrt(variance), 0-1 scale: Y, then Cb and Cr
BLUR_KERNEL = (7, 9)
DECODE_SIDE = 4 * SIZE  # decode at least this much of the short side: a fifth of the area keeps 224 px


@dataclass(frozen=True)
class ValidateConfig:
    """config.yaml `validate:`: which protocols the served model is cut challenges for and scored on."""

    protocols: tuple[str, ...]  # crop | letterbox | native (shared VALIDATOR.md), at least one

    def __post_init__(self) -> None:
        if not self.protocols or len(set(self.protocols)) != len(self.protocols):
            raise ValueError(f"validate.protocols={list(self.protocols)}: expected distinct protocols")
        for protocol in self.protocols:
            check_protocol(protocol)


def check_protocol(protocol: str) -> str:
    """`protocol`, or a ValueError naming the known ones."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"validator protocol {protocol!r}: expected one of {PROTOCOLS}")
    return protocol


def centre_box(width: int, height: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the centred square of the short side, offsets rounded half to even."""
    s = min(width, height)
    left, top = round((width - s) / 2), round((height - s) / 2)
    return left, top, left + s, top + s


def square_crop_box(width: int, height: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random resized square crop of area 0.2-1.0 (torchvision's rule at aspect
    1: ten tries, then the centred square of the short side)."""
    for _ in range(10):
        side = round(math.sqrt(width * height * rng.uniform(*CROP_AREA)))
        if 0 < side <= min(width, height):
            return int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1)), side, side
    side = min(width, height)
    return (height - side) // 2, (width - side) // 2, side, side


def letterbox_geometry(width: int, height: int) -> tuple[int, int, int, int]:
    """(new width, new height, left, top) of a `width` x `height` image letterboxed into 224 x 224: the
    scale that fits, the scaled size truncated to whole pixels (a float product can lose one), centred."""
    scale = min(SIZE / width, SIZE / height)
    new_w, new_h = int(width * scale), int(height * scale)
    return new_w, new_h, (SIZE - new_w) // 2, (SIZE - new_h) // 2


def letterbox(image: Image.Image, size: tuple[int, int] | None = None) -> Image.Image:
    """The whole image scaled to fit 224 x 224 (bilinear, antialiased) and centred on black; the
    geometry of its displayed `size` (width, height) when it was decoded at a reduced scale."""
    new_w, new_h, left, top = letterbox_geometry(*(size or image.size))
    canvas = Image.new("RGB", (SIZE, SIZE))
    canvas.paste(image.convert("RGB").resize((new_w, new_h), Image.Resampling.BILINEAR), (left, top))
    return canvas


def rotate(tensor: torch.Tensor, angle: float) -> torch.Tensor:
    """[C, H, W] rotated by `angle` degrees about its centre: nearest neighbour, black outside."""
    # Imported here: torchvision's import pulls in torch._dynamo (~2 s), paid by every stage that
    # imports this module otherwise, though only a few transform images.
    import torchvision.transforms.functional as TF

    return TF.rotate(tensor, angle, interpolation=TF.InterpolationMode.NEAREST, fill=[0] * tensor.shape[0])


def resized_crop(
    tensor: torch.Tensor, box: tuple[int, int, int, int], *, nearest: bool = False
) -> torch.Tensor:
    """[C, H, W] cut to `box` (top, left, h, w) and resized to 224 x 224: bilinear with antialias on
    float pixels (not rounded), or nearest (`nearest`: a label map follows its image)."""
    import torchvision.transforms.functional as TF

    mode = TF.InterpolationMode.NEAREST if nearest else TF.InterpolationMode.BILINEAR
    return TF.resized_crop(tensor, *box, [SIZE, SIZE], interpolation=mode, antialias=not nearest)


def truncate(pixels: np.ndarray) -> np.ndarray:
    """Float pixels as the validator's uint8: clipped to [0, 255] and truncated, not rounded."""
    return np.clip(pixels, 0.0, 255.0).astype(np.uint8)


LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # BT.601, the Y of YCbCr


def saturate(pixels: np.ndarray, factor: float) -> np.ndarray:
    """uint8 RGB with its chroma (Cb, Cr) scaled by `factor` around neutral, its luma kept."""
    x = pixels.astype(np.float32)
    luma = (x @ LUMA)[..., None]
    return truncate(luma + np.float32(factor) * (x - luma))


def contrast(pixels: np.ndarray, factor: float) -> np.ndarray:
    """uint8 pixel values scaled by `factor` (the image darkens)."""
    return truncate(pixels.astype(np.float32) * np.float32(factor))


def rescale(pixels: np.ndarray, factor: int) -> np.ndarray:
    """uint8 pixels down-scaled by `factor` and back up (OpenCV bilinear): the validator's "compression"."""
    h, w = pixels.shape[:2]
    small = cv2.resize(pixels, (max(1, w // factor), max(1, h // factor)), interpolation=cv2.INTER_LINEAR)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def noise(pixels: np.ndarray, variance: float, *, rng: np.random.Generator) -> np.ndarray:
    """uint8 pixels with Gaussian noise of `variance` added to Y, Cb and Cr (the validator's scale)."""
    ycc = cv2.cvtColor(pixels.astype(np.float32), cv2.COLOR_RGB2YCrCb)
    std = 255.0 * math.sqrt(variance) * np.array([NOISE_SCALE[0], NOISE_SCALE[1], NOISE_SCALE[1]], np.float32)
    ycc += rng.normal(0.0, 1.0, ycc.shape).astype(np.float32) * std
    return truncate(cv2.cvtColor(ycc, cv2.COLOR_YCrCb2RGB))


def blur(pixels: np.ndarray, kernel: int) -> np.ndarray:
    """uint8 pixels under a Gaussian blur, `kernel` x `kernel`, sigma = kernel / 6."""
    return cv2.GaussianBlur(pixels, (kernel, kernel), kernel / 6)


def distort(pixels: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    """Level 2 or 3 distortions of float or uint8 RGB pixels, in the order saturation, contrast,
    rescale, noise, blur; uint8 out (truncated before each distortion and at the end)."""
    ops = [(saturate, SATURATION), (contrast, CONTRAST), (rescale, RESCALE)]
    if level == 2:  # three distortions, each at its first value with probability 0.5
        chosen = [(fn, values[0]) for fn, values in ops if rng.random() < 0.5]
    else:  # five distortions, each at strength 0 (skipped), 1 or 2
        ops += [(partial(noise, rng=rng), NOISE_VARIANCE), (blur, BLUR_KERNEL)]
        strengths = rng.integers(0, 3, len(ops))
        chosen = [(fn, values[k - 1]) for (fn, values), k in zip(ops, strengths, strict=True) if k]
    out = truncate(pixels)
    for fn, value in chosen:
        out = fn(out, value)
    return out


def _tensor(image: Image.Image) -> torch.Tensor:
    """[3, H, W] float32 pixels 0-255 of an RGB image."""
    return torch.from_numpy(np.array(image.convert("RGB"), dtype=np.float32)).permute(2, 0, 1)


def _labels_crop(labels: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    left, top, right, bottom = box
    return cv2.resize(labels[top:bottom, left:right], (SIZE, SIZE), interpolation=cv2.INTER_NEAREST)


def challenge_pair(
    image: Image.Image,
    labels: np.ndarray | None,
    level: int,
    rng: np.random.Generator,
    protocol: str = "crop",
    size: tuple[int, int] | None = None,
) -> tuple[Image.Image, np.ndarray | None]:
    """The validator's `protocol` at `level` of `image` (a 224 x 224 RGB image for `crop` and
    `letterbox`, the image itself for `native`), with a uint8 [H, W] label map of the image (or None)
    carried through the same geometry by nearest neighbour (the pretraining corpus's targets);
    distortions touch pixels only. `size`: the displayed size the letterbox's geometry follows, when
    `image` was decoded at a reduced scale."""
    check_protocol(protocol)
    if level not in LEVELS:
        raise ValueError(f"challenge level {level!r}: expected one of {LEVELS}")
    image = image.convert("RGB")
    if protocol == "native":
        return image, labels
    if protocol == "letterbox":
        if labels is not None:
            new_w, new_h, left, top = letterbox_geometry(*(size or image.size))
            canvas = np.zeros((SIZE, SIZE), np.uint8)
            canvas[top : top + new_h, left : left + new_w] = cv2.resize(
                labels, (new_w, new_h), interpolation=cv2.INTER_NEAREST
            )
            labels = canvas
        image = letterbox(image, size)
        if level == 0:
            return image, labels
    elif level == 0:
        box = centre_box(*image.size)
        square = image.crop(box).resize((SIZE, SIZE), Image.Resampling.BILINEAR)
        return square, None if labels is None else _labels_crop(labels, box)
    angle = float(rng.uniform(-MAX_ANGLE, MAX_ANGLE))
    pixels = rotate(_tensor(image), angle)
    label_map = None if labels is None else rotate(torch.from_numpy(labels)[None], angle)
    if protocol == "crop":
        box = square_crop_box(image.width, image.height, rng)
        pixels = resized_crop(pixels, box)
        label_map = None if label_map is None else resized_crop(label_map, box, nearest=True)
    out = pixels.permute(1, 2, 0).numpy()
    out = truncate(out) if level == 1 else distort(out, level, rng)
    return Image.fromarray(out), None if label_map is None else label_map[0].numpy()


def challenge(
    image: Image.Image,
    level: int,
    rng: np.random.Generator,
    protocol: str = "crop",
    size: tuple[int, int] | None = None,
) -> Image.Image:
    """The validator's `protocol` at `level` of `image` (RGB), before JPEG (`size`: `challenge_pair`)."""
    return challenge_pair(image, None, level, rng, protocol, size)[0]


def to_jpeg(image: Image.Image, quality: int = JPEG_QUALITY) -> bytes:
    """The JPEG bytes a validator sends (quality 75, no metadata)."""
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def challenge_rng(seed: int, key: str) -> np.random.Generator:
    """The generator of one challenge, from a seed and a key (image id, copy, ...): a hash, so the same
    in every run, process and order."""
    digest = hashlib.sha256(f"{int(seed)}\0{key}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def draw_protocol(
    rng: np.random.Generator, shares: Mapping[str, float], stratum: tuple[int, int] = (0, 1)
) -> str:
    """One protocol drawn with probability proportional to its share (zero shares never drawn).
    `stratum` (j, n): the j-th of n draws for one image, stratified, so that n copies cover the
    protocols in their shares (two copies at equal crop and letterbox shares: one of each)."""
    names = [name for name in PROTOCOLS if shares.get(name, 0) > 0]
    if not names:
        raise ValueError(f"protocol shares {dict(shares)}: none is positive")
    weights = np.array([shares[name] for name in names], dtype=np.float64)
    u = (stratum[0] + rng.random()) / stratum[1]
    return names[
        min(int(np.searchsorted(np.cumsum(weights / weights.sum()), u, side="right")), len(names) - 1)
    ]


def protocol_jpeg(
    data: bytes, size: tuple[int, int], *, protocol: str, level: int, rng: np.random.Generator
) -> bytes:
    """The JPEG a validator sends for an image (displayed `size` = (width, height)) under `protocol` at
    `level`. `crop` decodes at the coarsest JPEG scale that keeps the short side at least 4 x 224 px
    (its smallest crop, a fifth of the area, still has 224 px to give); `letterbox` at the scale that
    keeps the long side at least 4 x 224 px; `native` at full size."""
    check_protocol(protocol)
    if protocol == "native":
        return to_jpeg(decode(data)[0])
    short = protocol == "crop"
    scale = min(1.0, DECODE_SIDE / (min(size) if short else max(size)))
    image, _ = decode(data, min_side_scale=scale)
    return to_jpeg(challenge(image, level, rng, protocol, size))
