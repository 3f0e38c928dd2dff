"""FOODS arithmetic: distance of a test embedding to the training distribution, selection, weights.

For one image with N augmentations, each augmentation's fused head embedding gets a distance d to the
training rows' clean embeddings; the closest `keep` share of the augmentations is kept, weighted by
softmax(-d / temperature) over the kept ones, and the image's probability is the weighted mean of the kept
augmentations' probabilities. An augmentation that pushes the image off the training distribution (one the
head has never seen anything like) thus counts little or not at all.

Distances are divided by the standard deviation of the training rows' own distances (leave-one-out for
knn), so a temperature means the same whatever the width, backbone or distance.
- mahalanobis: a Gaussian fitted on the training embeddings; the covariance is shrunk towards a scaled
  identity (Ledoit-Wolf's estimate of the amount, or a fixed one) so it is invertible when rows are few
  or the embedding is wider than the rows are many.
- knn: mean Euclidean distance to the k nearest training embeddings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.covariance import LedoitWolf

from roadwork.metrics import sigmoid

CHUNK = 4096  # query rows per distance block (bounds the [rows, train] distance matrix of knn)


@dataclass
class DistanceModel:
    """A fitted distance to the training embeddings; `__call__` gives distances in training-spread units."""

    kind: str  # mahalanobis | knn
    mean: np.ndarray | None = None  # [W] (mahalanobis)
    precision: np.ndarray | None = None  # [W, W] (mahalanobis)
    train: torch.Tensor | None = None  # [n, W] (knn)
    k: int = 1
    scale: float = 1.0  # std of the training rows' own distances

    def raw(self, x: np.ndarray) -> np.ndarray:
        """Unscaled distances of rows `x` [m, W]."""
        x = np.asarray(x, dtype=np.float64)
        if self.kind == "mahalanobis":
            diff = x - self.mean
            return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", diff, self.precision, diff), 0.0))
        return _knn(torch.from_numpy(x).float(), self.train, self.k)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.raw(x) / self.scale


def _knn(x: torch.Tensor, train: torch.Tensor, k: int, exclude_self: bool = False) -> np.ndarray:
    """Mean distance of each row of x to its k nearest rows of train (itself excluded if asked)."""
    out = []
    for start in range(0, len(x), CHUNK):
        d = torch.cdist(x[start : start + CHUNK], train)
        if exclude_self:
            rows = torch.arange(len(d))
            d[rows, rows + start] = math.inf
        out.append(d.topk(min(k, d.shape[1]), dim=1, largest=False).values.mean(dim=1).double().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def shrunk_covariance(x: np.ndarray, shrinkage: float | None) -> np.ndarray:
    """(1 - s) S + s tr(S)/p I with S the empirical covariance; s from Ledoit-Wolf when None."""
    if shrinkage is None:
        return LedoitWolf().fit(x).covariance_
    cov = np.cov(x, rowvar=False, bias=True).reshape(x.shape[1], x.shape[1])
    target = np.trace(cov) / x.shape[1] * np.eye(x.shape[1])
    return (1.0 - shrinkage) * cov + shrinkage * target


def fit_distance(
    train: np.ndarray, kind: str, *, k: int = 10, shrinkage: float | None = None
) -> DistanceModel:
    """Fit a distance on training embeddings `train` [n, W] (n >= 2)."""
    train = np.asarray(train, dtype=np.float64)
    if train.ndim != 2 or len(train) < 2:
        raise ValueError(f"fit_distance: need [n >= 2, W] training embeddings, got shape {train.shape}")
    if kind == "mahalanobis":
        cov = shrunk_covariance(train, shrinkage)
        model = DistanceModel(kind, mean=train.mean(axis=0), precision=np.linalg.pinv(cov, hermitian=True))
        own = model.raw(train)
    elif kind == "knn":
        model = DistanceModel(kind, train=torch.from_numpy(train).float(), k=k)
        own = _knn(model.train, model.train, k, exclude_self=True)
    else:
        raise ValueError(f"distance {kind!r}: expected 'mahalanobis' or 'knn'")
    spread = float(np.std(own))
    model.scale = spread if spread > 1e-12 else 1.0
    return model


def keep_closest(distance: np.ndarray, keep: float) -> np.ndarray:
    """bool [n, N]: per row the round(keep * N) smallest distances (at least one; ties: first listed)."""
    n_aug = distance.shape[1]
    n_keep = min(n_aug, max(1, math.floor(keep * n_aug + 0.5)))
    order = np.argsort(distance, axis=1, kind="stable")[:, :n_keep]
    mask = np.zeros(distance.shape, dtype=bool)
    np.put_along_axis(mask, order, True, axis=1)
    return mask


def foods_weights(distance: np.ndarray, keep: float, temperature: float) -> np.ndarray:
    """[n, N] weights: softmax(-d / temperature) over each row's kept augmentations, 0 elsewhere."""
    distance = np.asarray(distance, dtype=np.float64)
    if distance.ndim != 2 or not np.isfinite(distance).all():
        raise ValueError(f"foods_weights: expected finite [n, N] distances, got shape {distance.shape}")
    z = np.where(keep_closest(distance, keep), -distance / temperature, -np.inf)
    z = z - z.max(axis=1, keepdims=True)
    w = np.exp(z)
    return w / w.sum(axis=1, keepdims=True)


def foods_probability(logits: np.ndarray, distance: np.ndarray, keep: float, temperature: float):
    """(probability [n], weights [n, N]): the weighted mean probability of each row's augmentations."""
    weights = foods_weights(distance, keep, temperature)
    return (weights * sigmoid(logits)).sum(axis=1), weights
