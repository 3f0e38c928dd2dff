"""Test-time augmentation (FOODS): augmented views through the backbone, weighted by closeness to training.

`augment` makes the augmented views of an image, `extract` runs them through the backbone into a cache
keyed by (image, augmentation), `foods` holds the distance / selection / weighting arithmetic, `heads`
applies it to a member's head (plain and DoRA-adapted) and `run` strings these together for the stage.
This module owns the `tta:` params section.
"""

from __future__ import annotations

from dataclasses import dataclass

from roadwork.config import ConfigError
from roadwork.tta.augment import AugSpec

DISTANCES = ("mahalanobis", "knn")


@dataclass(frozen=True)
class TtaConfig:
    """params.yaml `tta:`."""

    parts: tuple[str, ...]  # member prediction files whose rows get TTA: val | test
    members: tuple[str, ...] | None  # members to augment; null: submit's top_k (those with an embedding)
    augmentations: tuple[AugSpec, ...]  # the N augmentations; cached per (image, augmentation)
    batch_views: int  # views per backbone forward pass
    chunk_rows: int  # compressed chunk along images inside a shard: the unit of reading
    shard_rows: int  # rows per shard file (a multiple of chunk_rows): the unit of writing and resuming
    workers: int  # DataLoader worker processes decoding and cutting images (0 = in the main process)
    device: str  # auto | cpu | cuda
    distance: str  # mahalanobis (Gaussian fit, shrunk covariance) | knn (mean distance to k nearest)
    knn_k: int  # neighbours of the knn distance
    shrinkage: float | None  # covariance shrinkage towards a scaled identity; null: Ledoit-Wolf estimate
    keep: float  # share of each image's augmentations kept: the closest ones
    temperature: float  # weights softmax(-d / temperature), d in units of the training rows' spread

    def __post_init__(self) -> None:
        if not self.augmentations:
            raise ConfigError("tta.augmentations: give at least one augmentation ({} is the identity)")
        keys = [a.key() for a in self.augmentations]
        doubled = sorted({k for k in keys if keys.count(k) > 1})
        if doubled:
            raise ConfigError(f"tta.augmentations: listed more than once: {doubled}")
        if self.distance not in DISTANCES:
            raise ConfigError(f"tta.distance={self.distance!r}: expected one of {list(DISTANCES)}")
        if not 0.0 < self.keep <= 1.0:
            raise ConfigError(f"tta.keep={self.keep}: expected a fraction in (0, 1]")
        if self.temperature <= 0 or min(self.knn_k, self.batch_views, self.chunk_rows, self.shard_rows) < 1:
            raise ConfigError("tta: temperature must be > 0; knn_k, batch_views, chunk_rows, shard_rows >= 1")
        if self.shrinkage is not None and not 0.0 <= self.shrinkage <= 1.0:
            raise ConfigError(f"tta.shrinkage={self.shrinkage}: expected null or a value in [0, 1]")
        unknown = sorted(set(self.parts) - {"val", "test"})
        if unknown or not self.parts:
            raise ConfigError(f"tta.parts={list(self.parts)}: expected some of ['val', 'test']")
