"""What a StreetVision validator does to an image before a miner sees it (`shared` VALIDATOR.md).

One level per challenge, 0-3, each a function of the image and a random generator:

- level 0: centre crop to a square of the short side, resize to 224 x 224;
- level 1: rotation by an angle uniform in [-20, 20] degrees (nearest neighbour, black outside the
  image, same canvas size), then a random resized crop to 224 x 224 (area 0.2-1.0 of the rotated
  image, aspect 3/4-4/3, bilinear with antialias; no flip);
- level 2: level 1, then each of saturation x0.4, contrast x0.85 and down-and-up scaling by 2,
  independently with probability 0.5;
- level 3: level 1, then each of five distortions at strength 0, 1 or 2 (a third each; 0 = skipped):
  saturation 0.4 / 0.3, contrast 0.85 / 0.725, down-and-up scaling 2 / 3, Gaussian noise in YCbCr of
  variance 0.001 / 0.002 (0-1 scale), Gaussian blur with kernel 7 / 9 and sigma = kernel / 6.

The result is always 224 x 224 RGB, then JPEG quality 75 (`to_jpeg`). Saturation scales the chroma
(Cb, Cr around their neutral 128) and keeps the luma; contrast scales the pixel values; distortions run
in the order listed. The random resized crop draws like torchvision's: up to ten tries of a log-uniform
aspect and a uniform area, else the largest centred crop with the aspect clamped to the range.
"""

from __future__ import annotations

import hashlib
import io
import math
from functools import partial

import cv2
import numpy as np
import torch
from PIL import Image

from roadwork.data.images import decode
from roadwork.views.crops import load_views
from roadwork.views.plan import ViewsConfig, view_boxes

SIZE = 224  # the validator's output side
JPEG_QUALITY = 75  # the validator's JPEG quality
LEVELS = (0, 1, 2, 3)
# Bump when a transform's output changes: cached validator-style copies are then rebuilt
# (2: saturation keeps a grey pixel grey; 1 cast colour through cv2's float chroma offset).
TRANSFORMS_VERSION = 2
MAX_ANGLE = 20.0
CROP_AREA = (0.2, 1.0)
CROP_ASPECT = (3 / 4, 4 / 3)
SATURATION = (0.4, 0.3)  # level 2 uses the first value, level 3 strength 1 / 2
CONTRAST = (0.85, 0.725)
RESCALE = (2, 3)
NOISE_VARIANCE = (0.001, 0.002)
BLUR_KERNEL = (7, 9)


def centre_box(width: int, height: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the centred square of the short side."""
    s = min(width, height)
    return (width - s) // 2, (height - s) // 2, (width - s) // 2 + s, (height - s) // 2 + s


def centre_square(image: Image.Image) -> Image.Image:
    """Level 0: the centred square of the short side, resized to 224 x 224."""
    return image.crop(centre_box(*image.size)).resize((SIZE, SIZE), Image.Resampling.BILINEAR)


def crop_box(width: int, height: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random resized crop: area 0.2-1.0, aspect 3/4-4/3 (torchvision's rule)."""
    area = width * height
    log_ratio = (math.log(CROP_ASPECT[0]), math.log(CROP_ASPECT[1]))
    for _ in range(10):
        target = area * rng.uniform(*CROP_AREA)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    ratio = width / height  # fallback: the whole image, its aspect clamped to the range
    if ratio < CROP_ASPECT[0]:
        w, h = width, round(width / CROP_ASPECT[0])
    elif ratio > CROP_ASPECT[1]:
        h, w = height, round(height * CROP_ASPECT[1])
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


Geometry = tuple[float, tuple[int, int, int, int]]  # rotation angle, crop (top, left, h, w)


def draw_geometry(width: int, height: int, rng: np.random.Generator) -> Geometry:
    """Level 1's draws: the angle in [-20, 20] degrees, then the random resized crop's box."""
    angle = float(rng.uniform(-MAX_ANGLE, MAX_ANGLE))
    return angle, crop_box(width, height, rng)


def apply_geometry(tensor: torch.Tensor, geometry: Geometry, *, nearest: bool = False) -> torch.Tensor:
    """[C, H, W] rotated (nearest, black corners) and crop-resized to 224 x 224: bilinear with antialias,
    or nearest (`nearest`: a label map follows its image)."""
    # Imported here: torchvision's import pulls in torch._dynamo (~2 s), paid by every stage that
    # imports this module otherwise, though only `extract`, `challenge` and pretraining transform images.
    import torchvision.transforms.functional as TF

    angle, (top, left, h, w) = geometry
    mode = TF.InterpolationMode
    rotated = TF.rotate(tensor, angle, interpolation=mode.NEAREST, fill=[0] * tensor.shape[0])
    resize = mode.NEAREST if nearest else mode.BILINEAR
    return TF.resized_crop(
        rotated, top, left, h, w, [SIZE, SIZE], interpolation=resize, antialias=not nearest
    )


LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # BT.601, the Y of YCbCr


def saturate(pixels: np.ndarray, factor: float) -> np.ndarray:
    """Chroma (Cb, Cr) scaled by `factor` around neutral, luma kept; float32 RGB in [0, 255]. Cb and Cr
    are multiples of B - Y and R - Y, so this is Y + factor (RGB - Y), and a grey pixel stays grey.
    (Not through cv2's float YCrCb: its neutral chroma is 0.5 whatever the range, not 128.)"""
    luma = pixels @ LUMA
    return luma[..., None] + np.float32(factor) * (pixels - luma[..., None])


def contrast(pixels: np.ndarray, factor: float) -> np.ndarray:
    """Pixel values scaled by `factor`."""
    return pixels * np.float32(factor)


def rescale(pixels: np.ndarray, factor: int) -> np.ndarray:
    """Down-scaled by `factor` and back up (bilinear): the validator's "compression"."""
    h, w = pixels.shape[:2]
    small = cv2.resize(pixels, (max(1, w // factor), max(1, h // factor)), interpolation=cv2.INTER_LINEAR)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def noise(pixels: np.ndarray, variance: float, *, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise of `variance` (on a 0-1 scale) added to Y, Cb and Cr."""
    ycc = cv2.cvtColor(pixels, cv2.COLOR_RGB2YCrCb)
    ycc += rng.normal(0.0, 255.0 * math.sqrt(variance), ycc.shape).astype(np.float32)
    return cv2.cvtColor(ycc, cv2.COLOR_YCrCb2RGB)


def blur(pixels: np.ndarray, kernel: int) -> np.ndarray:
    """Gaussian blur, `kernel` x `kernel`, sigma = kernel / 6."""
    return cv2.GaussianBlur(pixels, (kernel, kernel), kernel / 6)


def distort(image: Image.Image, level: int, rng: np.random.Generator) -> Image.Image:
    """Level 2 or 3 distortions of a 224 x 224 image, in the order saturation, contrast, rescale,
    noise, blur; each output is clipped to [0, 255] before the next."""
    ops = [(saturate, SATURATION), (contrast, CONTRAST), (rescale, RESCALE)]
    if level == 2:  # three distortions, each at its first value with probability 0.5
        chosen = [(fn, values[0]) for fn, values in ops if rng.random() < 0.5]
    else:  # five distortions, each at strength 0 (skipped), 1 or 2
        ops += [(partial(noise, rng=rng), NOISE_VARIANCE), (blur, BLUR_KERNEL)]
        strengths = rng.integers(0, 3, len(ops))
        chosen = [(fn, values[k - 1]) for (fn, values), k in zip(ops, strengths, strict=True) if k]
    pixels = np.asarray(image, dtype=np.float32)
    for fn, value in chosen:
        pixels = np.clip(fn(pixels, value), 0.0, 255.0)
    return Image.fromarray(np.rint(pixels).astype(np.uint8))


def challenge(image: Image.Image, level: int, rng: np.random.Generator) -> Image.Image:
    """The validator's level-`level` version of `image` (RGB): a 224 x 224 RGB image (before JPEG)."""
    return challenge_pair(image, None, level, rng)[0]


def challenge_pair(
    image: Image.Image, labels: np.ndarray | None, level: int, rng: np.random.Generator
) -> tuple[Image.Image, np.ndarray | None]:
    """`challenge`, with a uint8 [H, W] label map of the image (or None) carried through the same crop
    and rotation by nearest neighbour (the pretraining corpus's targets); distortions touch pixels only."""
    if level not in LEVELS:
        raise ValueError(f"challenge level {level!r}: expected one of {LEVELS}")
    image = image.convert("RGB")
    if level == 0:
        left, top, right, bottom = centre_box(*image.size)
        if labels is not None:
            labels = cv2.resize(labels[top:bottom, left:right], (SIZE, SIZE), interpolation=cv2.INTER_NEAREST)
        return centre_square(image), labels
    geometry = draw_geometry(image.width, image.height, rng)
    pixels = apply_geometry(torch.from_numpy(np.array(image)).permute(2, 0, 1), geometry)
    out = Image.fromarray(pixels.permute(1, 2, 0).numpy())
    if labels is not None:
        labels = apply_geometry(torch.from_numpy(labels)[None], geometry, nearest=True)[0].numpy()
    return (out if level == 1 else distort(out, level, rng)), labels


def to_jpeg(image: Image.Image, quality: int = JPEG_QUALITY) -> bytes:
    """The JPEG bytes a validator sends (quality 75)."""
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def challenge_rng(seed: int, key: str) -> np.random.Generator:
    """The generator of one challenge, from a seed and a key (image id, copy, ...): a hash, so the same
    in every run, process and order."""
    digest = hashlib.sha256(f"{int(seed)}\0{key}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def challenge_views(
    data: bytes, size: tuple[int, int], *, rng: np.random.Generator, views: ViewsConfig, side: int
) -> np.ndarray:
    """A validator-style copy of an image, as the served model will see one: a level drawn uniformly
    from 0-3, the level's transform, JPEG quality 75 (`challenge_jpeg`), then the views of that 224 px
    JPEG (the rule for small images), each resized to `side`: uint8 [V, side, side, 3]."""
    jpeg = challenge_jpeg(data, size, rng)
    return load_views(jpeg, view_boxes(SIZE, SIZE, views), side, size=(SIZE, SIZE))


def challenge_jpeg(data: bytes, size: tuple[int, int], rng: np.random.Generator) -> bytes:
    """A validator-style copy of an image (displayed `size` = (width, height)): a level drawn uniformly
    from 0-3, the level's transform, JPEG quality 75. Decoded at the coarsest JPEG scale that keeps the
    short side at least 4 x 224 px: the smallest crop (a fifth of the area) still has 224 px to give."""
    image, _ = decode(data, min_side_scale=min(1.0, 4 * SIZE / min(size)))
    return to_jpeg(challenge(image, int(rng.integers(0, len(LEVELS))), rng))
