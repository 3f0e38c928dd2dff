"""The per-view augmentation pipeline: valid arguments, per-call seeding, reproducibility."""

from __future__ import annotations

import hashlib
import warnings

import albumentations as A
import numpy as np
import pytest

from roadwork.views.augment import augment_views, build_augment, view_seed

SIDE = 64


def _views(n: int = 12, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    grad = np.linspace(40, 215, SIDE, dtype=np.float32)[None, :, None]
    noise = rng.normal(0, 12, (n, SIDE, SIDE, 3))
    return np.clip(grad + noise, 0, 255).astype(np.uint8)


def _leaves(transform: A.BaseCompose) -> list[A.BasicTransform]:
    out: list[A.BasicTransform] = []
    for t in transform.transforms:
        out += _leaves(t) if isinstance(t, A.BaseCompose) else [t]
    return out


def test_pipeline_builds_without_any_warning() -> None:
    # albumentations only warns about stale argument names (var_limit, fog_coef_lower, ...).
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        transform = build_augment(112)
    assert caught == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_augment(512)
    names = {type(t).__name__ for t in _leaves(transform)}
    assert {"Affine", "GaussNoise", "RandomRain", "RandomFog", "RandomShadow", "RandomSunFlare"} <= names
    assert "HorizontalFlip" not in names  # the right-side view must stay on the right


def test_every_transform_runs_at_view_size() -> None:
    image = _views(1)[0]
    for leaf in _leaves(build_augment(SIDE)):
        single = A.Compose([type(leaf)(**{**leaf.get_transform_init_args(), "p": 1.0})], seed=1)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            out = single(image=image)["image"]
        assert out.shape == image.shape and out.dtype == np.uint8, type(leaf).__name__
        assert not np.array_equal(out, image), f"{type(leaf).__name__} left the view unchanged"


def test_view_seed_is_a_stable_hash() -> None:
    expected = int.from_bytes(hashlib.sha256(b"7\0abc\x001\x002").digest()[:4], "little")
    assert view_seed(7, "abc", 1, 2) == expected
    seeds = {view_seed(0, f"img{i}", c, v) for i in range(20) for c in range(3) for v in range(12)}
    assert len(seeds) == 20 * 3 * 12 and all(0 <= s < 2**32 for s in seeds)


def test_same_seed_same_output_regardless_of_history() -> None:
    views = _views()
    transform = build_augment(SIDE)
    first = augment_views(views, transform=transform, seed=3, image_id="a", copy=1)
    assert first.shape == views.shape and first.dtype == np.uint8
    augment_views(_views(seed=5), transform=transform, seed=3, image_id="other", copy=0)  # moves the state
    again = augment_views(views, transform=transform, seed=3, image_id="a", copy=1)
    fresh = augment_views(views, transform=build_augment(SIDE), seed=3, image_id="a", copy=1)
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(first, fresh)
    assert not np.array_equal(first, views)


def test_different_copy_view_image_or_seed_differ() -> None:
    same = np.repeat(_views(1), 12, axis=0)  # 12 identical views: each must get its own draw
    transform = build_augment(SIDE)
    out = augment_views(same, transform=transform, seed=0, image_id="a", copy=1)
    distinct = {out[v].tobytes() for v in range(12)}
    assert len(distinct) == 12
    base = augment_views(same, transform=transform, seed=0, image_id="a", copy=1)
    for kwargs in ({"copy": 2}, {"image_id": "b"}, {"seed": 1}):
        other = augment_views(same, transform=transform, **{"seed": 0, "image_id": "a", "copy": 1, **kwargs})
        assert not np.array_equal(other, base), kwargs


def test_augment_views_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"expected uint8 \[V, S, S, 3\]"):
        augment_views(
            _views().astype(np.float32), transform=build_augment(SIDE), seed=0, image_id="a", copy=1
        )
    with pytest.raises(ValueError, match="side must be >= 8"):
        build_augment(4)
