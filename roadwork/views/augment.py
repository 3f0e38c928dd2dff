"""The heavy augmentation pipeline for training copies, applied per view after resizing to `side`.

Applied at view size, not on the full image: weather effects cost time in proportion to the pixels
(RandomFog alone takes seconds on a 1344 px tile) and every view gets its own draw anyway. No flips:
the "right" view is the kerb side of the road, a mirrored copy would teach the wrong side.

Reproducibility: each (seed, image, copy, view) gets its own 32-bit seed from a hash, and the whole
pipeline draws from one generator pair seeded with it just before the call, so a view's augmentation
does not depend on batch composition, order, worker process or what was augmented before.
"""

from __future__ import annotations

import hashlib
import random

import albumentations as A
import cv2
import numpy as np

# Reflect at borders so rotations and shifts do not paint black wedges a model could key on.
_BORDER = cv2.BORDER_REFLECT_101


def build_augment(side: int) -> A.Compose:
    """The pipeline for `side` x `side` uint8 RGB views (size-dependent radii scale with `side`)."""
    if side < 8:
        raise ValueError(f"build_augment: side must be >= 8, got {side}")
    geometric = A.OneOf(
        [
            A.Affine(
                scale=(0.9, 1.1),
                translate_percent=(-0.05, 0.05),
                rotate=(-7, 7),
                shear=(-3, 3),
                border_mode=_BORDER,
                p=1.0,
            ),
            A.Perspective(scale=(0.02, 0.05), border_mode=_BORDER, p=1.0),
        ],
        p=0.6,
    )
    colour = A.OneOf(
        [
            A.ColorJitter(brightness=0.25, contrast=0.25, saturation=0.25, hue=0.03, p=1.0),
            A.RandomBrightnessContrast(brightness_limit=0.25, contrast_limit=0.25, p=1.0),
            # Small hue shifts only: orange cones and signs must stay orange.
            A.HueSaturationValue(hue_shift_limit=6, sat_shift_limit=25, val_shift_limit=20, p=1.0),
        ],
        p=0.8,
    )
    weather = [
        A.RandomRain(rain_type="drizzle", blur_value=3, brightness_coefficient=0.85, p=0.05),
        # RandomFog blends one full-view overlay per particle and lower intensities draw more particles:
        # ~30 ms at 112 px, ~300 ms at 512 px per call even in this range, hence the low p.
        A.RandomFog(fog_coef_range=(0.3, 0.6), alpha_coef=0.08, p=0.03),
        A.RandomShadow(shadow_roi=(0.0, 0.5, 1.0, 1.0), num_shadows_limit=(1, 2), p=0.1),
        A.RandomSunFlare(
            flare_roi=(0.0, 0.0, 1.0, 0.5),
            src_radius=max(8, side // 4),
            num_flare_circles_range=(3, 6),
            p=0.05,
        ),
    ]
    degrade = [
        A.GaussNoise(std_range=(0.01, 0.05), p=0.2),
        A.OneOf(
            [
                A.GaussianBlur(blur_limit=(3, 5), sigma_limit=(0.2, 1.2), p=1.0),
                A.MotionBlur(blur_limit=(3, 5), p=1.0),
            ],
            p=0.15,
        ),
        A.ImageCompression(compression_type="jpeg", quality_range=(50, 95), p=0.3),
    ]
    return A.Compose([geometric, colour, *weather, *degrade], seed=0)


def view_seed(seed: int, image_id: str, copy: int, view: int) -> int:
    """A stable 32-bit seed for one augmented view (a hash: the same in every process and run)."""
    key = f"{int(seed)}\0{image_id}\0{int(copy)}\0{int(view)}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:4], "little")


def augment_views(
    views: np.ndarray, *, transform: A.Compose, seed: int, image_id: str, copy: int
) -> np.ndarray:
    """Augment each view of one image independently: uint8 [V, S, S, 3] -> same shape and dtype.

    Mutates the transform's random state, so a transform must not be shared between threads.
    """
    if views.ndim != 4 or views.shape[-1] != 3 or views.dtype != np.uint8:
        raise ValueError(f"augment_views: expected uint8 [V, S, S, 3], got {views.dtype} {views.shape}")
    out = np.empty_like(views)
    for v in range(len(views)):
        s = view_seed(seed, image_id, copy, v)
        # One generator pair shared by every transform (set_random_state propagates it): seeding each
        # transform with the same number (set_random_seed) would correlate their draws, e.g. every
        # weather effect with the same p would fire together.
        transform.set_random_state(np.random.default_rng(s), random.Random(s))
        result = transform(image=views[v])["image"]
        if result.shape != views[v].shape or result.dtype != np.uint8:
            raise ValueError(f"augment_views: view {v} came back {result.dtype} {result.shape}")
        out[v] = result
    return out
