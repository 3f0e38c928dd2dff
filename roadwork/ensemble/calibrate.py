"""The served probability, calibrated so that the chosen threshold sits at 0.5.

A StreetVision validator rounds every answer at 0.5 (p > 0.5 is roadwork), so a model whose best cut
on its own logits is elsewhere loses MCC for nothing. On the validation challenges the cut `t` that
maximises MCC (ties: the higher accuracy, then the cut nearest 0) is moved to 0.5 and the slope `a`
is fitted by maximum likelihood with that offset fixed: p = sigmoid(a (logit - t)). Identity is
t = 0, a = 1.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar

from roadwork.metrics import mcc, sigmoid

SLOPE_BOUNDS = (0.01, 20.0)


@dataclass(frozen=True)
class Calibration:
    """p = sigmoid(slope * (logit - threshold))."""

    threshold: float  # the logit served as probability 0.5
    slope: float  # > 0: how fast the probability leaves 0.5

    def probability(self, logit: Any) -> np.ndarray:
        return sigmoid(self.slope * (np.asarray(logit, dtype=np.float64) - self.threshold))

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


IDENTITY = Calibration(threshold=0.0, slope=1.0)


def best_cut(logit: np.ndarray, label: np.ndarray, weight: np.ndarray | None = None) -> float:
    """The logit cut (predict roadwork above it) with the highest MCC on labelled rows (`weight`: per
    row, None: 1 each); ties go to the higher accuracy, then to the cut nearest 0. Cuts are midpoints
    between consecutive distinct logits (and one below the smallest), so each is a real decision
    boundary."""
    values = np.unique(logit)
    cuts = np.concatenate([[values[0] - 1.0], (values[:-1] + values[1:]) / 2])
    w = np.ones(len(logit)) if weight is None else np.asarray(weight, dtype=np.float64)
    scored = []
    for cut in cuts:
        pred = (logit > cut).astype(int)
        scored.append((mcc(label, pred, w), float(np.average(pred == label, weights=w)), -abs(cut), cut))
    return float(max(scored)[3])


def fit_calibration(logit: Any, label: Any, weight: Any = None) -> Calibration:
    """The calibration of `logit` (ensemble log-odds) on labelled validation challenges (`weight`: per
    row, None: 1 each)."""
    logit, label = np.asarray(logit, dtype=np.float64), np.asarray(label, dtype=np.int64)
    if len(np.unique(label)) < 2:
        raise ValueError("fit_calibration: the validation challenges hold one label only")
    w = np.ones(len(logit)) if weight is None else np.asarray(weight, dtype=np.float64)
    cut = best_cut(logit, label, w)

    def log_loss(slope: float) -> float:
        p = np.clip(sigmoid(slope * (logit - cut)), 1e-12, 1 - 1e-12)
        return float(-np.average(label * np.log(p) + (1 - label) * np.log(1 - p), weights=w))

    slope = minimize_scalar(log_loss, bounds=SLOPE_BOUNDS, method="bounded").x
    return Calibration(threshold=cut, slope=float(slope))
