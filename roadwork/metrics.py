"""Binary classification metrics and bootstrap intervals, shared by train, ensemble, submit and report.

Conventions: `y_true` is 0/1 (1 = roadwork), `prob` the roadwork probability in [0, 1], and a row is
predicted roadwork when `prob > threshold` (the miner contract: > 0.5 means roadwork).

The bootstrap expresses every resample as integer row weights (how often each row was drawn) and
computes all metrics as weighted sums over a `[resamples, rows]` weight matrix, so 1000 resamples
cost a few matrix products instead of 1000 Python-level metric calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl

METRICS = ("mcc", "accuracy", "f1", "roc_auc", "brier", "ece", "reward")
CI_METRICS = ("mcc", "accuracy", "f1", "roc_auc", "brier", "reward")
_BLOCK_CELLS = 4_000_000  # weight-matrix cells per bootstrap block (~32 MB of float64)


def sigmoid(logit: Any) -> np.ndarray:
    """The roadwork probability of a log-odds value, in float64 (0 or 1 exactly only beyond its range)."""
    with np.errstate(over="ignore"):  # exp(800) is inf, and 1 / inf the right 0
        return 1.0 / (1.0 + np.exp(-np.asarray(logit, dtype=np.float64)))


def _scalar(v: Any) -> Any:
    """A numpy scalar as its Python value, for readable error messages."""
    return v.item() if isinstance(v, np.generic) else v


def _labels(y_true: Any, name: str = "y_true") -> np.ndarray:
    y = np.asarray(y_true)
    if y.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {y.shape}")
    if y.dtype == bool:
        return y.astype(np.int64)
    bad = ~np.isin(y, (0, 1))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{name}: labels must be 0 or 1; row {i} is {_scalar(y[i])!r}")
    return y.astype(np.int64)


def _inputs(y_true: Any, prob: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validated (labels, probabilities) of equal, non-zero length."""
    y = _labels(y_true)
    p = np.asarray(prob, dtype=float)
    if p.shape != y.shape:
        raise ValueError(f"prob: shape {p.shape} differs from y_true {y.shape}")
    if len(y) == 0:
        raise ValueError("y_true: no rows to evaluate")
    bad = ~np.isfinite(p) | (p < 0) | (p > 1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"prob: must be finite and in [0, 1]; row {i} is {_scalar(p[i])!r}")
    return y, p


def _mcc_counts(tp: Any, fp: Any, fn: Any, tn: Any) -> np.ndarray:
    """MCC from (weighted) confusion counts; 0 where the denominator vanishes (as scikit-learn)."""
    tp, fp, fn, tn = (np.asarray(v, dtype=float) for v in (tp, fp, fn, tn))
    den = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    num = tp * tn - fp * fn
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def mcc(y_true: Any, y_pred: Any, weight: Any = None) -> float:
    """Matthews correlation coefficient of 0/1 predictions; `weight`: per-row weights of the confusion
    counts (None: 1 each).

    Undefined when a row or column of the confusion matrix is empty (one class predicted, or one
    class present): returns 0.0 then, like scikit-learn: such a classifier carries no information.
    """
    y, yp = _labels(y_true), _labels(y_pred, "y_pred")
    if y.shape != yp.shape:
        raise ValueError(f"y_pred: shape {yp.shape} differs from y_true {y.shape}")
    w = np.ones(len(y)) if weight is None else np.asarray(weight, dtype=float)
    tp, fp = np.sum(w * ((y == 1) & (yp == 1))), np.sum(w * ((y == 0) & (yp == 1)))
    fn, tn = np.sum(w * ((y == 1) & (yp == 0))), np.sum(w * ((y == 0) & (yp == 0)))
    return float(_mcc_counts(tp, fp, fn, tn))


def _bin_onehot(p: np.ndarray, bins: int) -> np.ndarray:
    """[n, bins] membership of equal-width bins on [0, 1]; p = 1 falls in the last bin."""
    if bins < 1:
        raise ValueError(f"bins: must be >= 1, got {bins}")
    idx = np.minimum((p * bins).astype(np.int64), bins - 1)
    return np.eye(bins)[idx]


def expected_calibration_error(y_true: Any, prob: Any, bins: int = 15) -> float:
    """ECE of the roadwork probability: sum over equal-width bins of (n_b / n) |mean(y_b) - mean(p_b)|.

    Binned on the positive-class probability (the reliability diagram of the report), not on the
    top-label confidence.
    """
    y, p = _inputs(y_true, prob)
    onehot = _bin_onehot(p, bins)
    return float(np.sum(np.abs(onehot.T @ (y - p))) / len(y))


def reward_proxy(mcc: Any, accuracy: Any) -> Any:
    """StreetVision reward proxy `(0.5 mcc + 0.5 accuracy) ** 3`.

    The base is clipped at 0: it is negative only for a classifier worse than chance (mcc < -accuracy),
    which earns no reward rather than a negative one. Works elementwise on arrays.
    """
    base = np.clip(0.5 * np.asarray(mcc, dtype=float) + 0.5 * np.asarray(accuracy, dtype=float), 0.0, None)
    out = base**3
    return float(out) if out.ndim == 0 else out


def binary_metrics(y_true: Any, prob: Any, threshold: float = 0.5) -> dict[str, Any]:
    """mcc, accuracy, f1, roc_auc (None with one class), brier, ece, reward, n, positives, threshold."""
    from sklearn.metrics import roc_auc_score  # here: sklearn's import costs every stage ~1 s otherwise

    y, p = _inputs(y_true, prob)
    pred = (p > threshold).astype(np.int64)
    tp, fp = int(np.sum((y == 1) & (pred == 1))), int(np.sum((y == 0) & (pred == 1)))
    fn = int(np.sum((y == 1) & (pred == 0)))
    m = mcc(y, pred)
    acc = float(np.mean(y == pred))
    return {
        "mcc": m,
        "accuracy": acc,
        "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0,
        "roc_auc": float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else None,
        "brier": float(np.mean((p - y) ** 2)),
        "ece": expected_calibration_error(y, p),
        "reward": reward_proxy(m, acc),
        "n": len(y),
        "positives": int(y.sum()),
        "threshold": float(threshold),
    }


def _weighted_auc(y: np.ndarray, p: np.ndarray, w: np.ndarray) -> np.ndarray:
    """ROC AUC per row of weights w [B, n]: P(score_pos > score_neg) + 0.5 P(tie); NaN with one class."""
    order = np.argsort(p, kind="stable")
    ps, ys, ws = p[order], y[order], w[:, order]
    starts = np.flatnonzero(np.r_[True, np.diff(ps) != 0])  # tied scores form one block
    pos = np.add.reduceat(ws * ys, starts, axis=1)
    neg = np.add.reduceat(ws * (1 - ys), starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    num = np.sum(pos * (below + 0.5 * neg), axis=1)
    den = pos.sum(axis=1) * neg.sum(axis=1)
    return np.divide(num, den, out=np.full(len(w), np.nan), where=den > 0)


def _weighted_metrics(
    y: np.ndarray, p: np.ndarray, w: np.ndarray, threshold: float, names: Sequence[str], bins: int = 15
) -> dict[str, np.ndarray]:
    """Each metric in `names` for each row of integer row weights w [B, n] (a bootstrap resample)."""
    w = w.astype(float)
    pred = p > threshold
    yb = y == 1
    tp, fp = w @ (yb & pred), w @ (~yb & pred)
    fn, tn = w @ (yb & ~pred), w @ (~yb & ~pred)
    total = w.sum(axis=1)
    out: dict[str, np.ndarray] = {}
    m = _mcc_counts(tp, fp, fn, tn)
    acc = (tp + tn) / total
    for name in names:
        if name == "mcc":
            out[name] = m
        elif name == "accuracy":
            out[name] = acc
        elif name == "f1":
            den = 2 * tp + fp + fn
            out[name] = np.divide(2 * tp, den, out=np.zeros_like(den), where=den > 0)
        elif name == "roc_auc":
            out[name] = _weighted_auc(y, p, w)
        elif name == "brier":
            out[name] = w @ (p - y) ** 2 / total
        elif name == "ece":
            out[name] = np.sum(np.abs(w @ (_bin_onehot(p, bins) * (y - p)[:, None])), axis=1) / total
        elif name == "reward":
            out[name] = reward_proxy(m, acc)
        else:
            raise ValueError(f"metric {name!r}: unknown; known: {list(METRICS)}")
    return out


def _resample_weights(rng: np.random.Generator, b: int, codes: np.ndarray | None, n_rows: int) -> np.ndarray:
    """[b, n_rows] draw counts: rows drawn with replacement, or whole groups (codes -> group index)."""
    units = n_rows if codes is None else int(codes.max()) + 1
    draws = rng.integers(0, units, size=(b, units)) + units * np.arange(b)[:, None]
    counts = np.bincount(draws.ravel(), minlength=b * units).reshape(b, units)
    return counts if codes is None else counts[:, codes]


def _group_codes(groups: Any, n_rows: int) -> np.ndarray | None:
    if groups is None:
        return None
    g = np.asarray(groups, dtype=object)
    if g.shape != (n_rows,):
        raise ValueError(f"groups: shape {g.shape} differs from y_true ({n_rows},)")
    missing = [i for i, v in enumerate(g) if v is None]
    if missing:
        raise ValueError(f"groups: row {missing[0]} has no group (None); give every row a group key")
    return np.unique(g.astype(str), return_inverse=True)[1].ravel()


def _bootstrap(
    y_true: Any, prob: Any, names: Sequence[str], *, n: int, seed: int, groups: Any, threshold: float
) -> dict[str, np.ndarray]:
    """`n` bootstrap values of each metric in `names`, resampling rows or whole groups."""
    if n < 1:
        raise ValueError(f"n: number of resamples must be >= 1, got {n}")
    y, p = _inputs(y_true, prob)
    codes = _group_codes(groups, len(y))
    rng = np.random.default_rng(seed)
    block = max(1, _BLOCK_CELLS // len(y))
    parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for start in range(0, n, block):
        w = _resample_weights(rng, min(block, n - start), codes, len(y))
        for name, values in _weighted_metrics(y, p, w, threshold, names).items():
            parts[name].append(values)
    return {name: np.concatenate(v) for name, v in parts.items()}


def _percentile(values: np.ndarray, alpha: float) -> tuple[float, float]:
    """Percentile interval ignoring undefined resamples (NaN AUC); (nan, nan) when none is defined."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha: must be in (0, 1), got {alpha}")
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return float("nan"), float("nan")
    lo, hi = np.percentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def metrics_with_ci(
    y_true: Any,
    prob: Any,
    *,
    threshold: float = 0.5,
    n: int = 1000,
    seed: int = 0,
    groups: Any = None,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """{metric, metric_lo, metric_hi} for CI_METRICS (one shared set of resamples), plus n, positives.

    Percentile bootstrap intervals (1 - alpha). With `groups` (e.g. video ids) whole groups are
    resampled: frames of one video are near-duplicates, and resampling them as independent rows would
    give intervals that are too narrow.

    Bounds are separate scalar keys (not a list) so that `dvc metrics show/diff` display them.
    roc_auc and its interval are None when y_true holds one class only.
    """
    point = binary_metrics(y_true, prob, threshold)
    values = _bootstrap(y_true, prob, CI_METRICS, n=n, seed=seed, groups=groups, threshold=threshold)
    out: dict[str, Any] = {}
    for name in CI_METRICS:
        out[name] = point[name]
        lo, hi = (None, None) if point[name] is None else _percentile(values[name], alpha)
        out[f"{name}_lo"], out[f"{name}_hi"] = lo, hi
    out.update(n=point["n"], positives=point["positives"], threshold=point["threshold"])
    return out


def score(frame: pl.DataFrame, threshold: float, n: int) -> dict[str, Any] | None:
    """Metrics with 95 % group-bootstrap intervals on the labelled rows of a prediction frame (columns
    label, prob, group: `roadwork.predictions`); None when no row is labelled."""
    labelled = frame.filter(pl.col("label").is_not_null())
    if labelled.is_empty():
        return None
    return metrics_with_ci(
        labelled["label"].to_numpy(),
        labelled["prob"].to_numpy(),
        threshold=threshold,
        n=n,
        seed=0,
        groups=labelled["group"].to_numpy(),
    )


def compare(before: pl.DataFrame, after: pl.DataFrame, threshold: float, n: int) -> dict[str, Any]:
    """Before/after on the same rows: both scores, ΔMCC, mean / max |Δlogit| and changed decisions.

    Written so that a refinement (DoRA, TTA) that changes nothing measurable says so in plain numbers.
    """
    joined = before.select("image_id", "label", "group", "logit", "prob").join(
        after.select("image_id", logit_after="logit", prob_after="prob"), on="image_id", how="inner"
    )
    if len(joined) != len(before) or len(joined) != len(after):
        raise ValueError(
            f"compare: frames hold different rows ({len(before)} before, {len(after)} after, "
            f"{len(joined)} shared)"
        )
    delta = np.abs(joined["logit_after"].to_numpy() - joined["logit"].to_numpy())
    changed = (joined["prob"].to_numpy() > threshold) != (joined["prob_after"].to_numpy() > threshold)
    out: dict[str, Any] = {
        "rows": len(joined),
        "mean_abs_delta_logit": float(delta.mean()) if len(delta) else 0.0,
        "max_abs_delta_logit": float(delta.max()) if len(delta) else 0.0,
        "decisions_changed": int(changed.sum()),
        "before": score(joined, threshold, n),
        "after": score(
            joined.select("image_id", "label", "group", logit="logit_after", prob="prob_after"), threshold, n
        ),
    }
    if out["before"] is not None:
        out["delta_mcc"] = out["after"]["mcc"] - out["before"]["mcc"]
    return out


def validator_reward(mcc: Any, accuracy: Any) -> Any:
    """A StreetVision validator's reward `(0.5 max(MCC, 0) + 0.5 accuracy) ** 3` (elementwise)."""
    out = (0.5 * np.maximum(np.asarray(mcc, dtype=float), 0.0) + 0.5 * np.asarray(accuracy, dtype=float)) ** 3
    return float(out) if out.ndim == 0 else out


def validator_metrics(
    y_true: Any, prob: Any, *, n: int = 1000, seed: int = 0, groups: Any = None, alpha: float = 0.05
) -> dict[str, Any]:
    """How a validator scores answers `prob` to challenges labelled `y_true`: a probability above 0.5
    is roadwork, exactly 0.5 is not; MCC floored at 0 (0 when labels or answers hold one class);
    accuracy; reward. Each with a percentile bootstrap interval (`groups`: resample whole groups)."""
    point = binary_metrics(y_true, prob, threshold=0.5)
    values = _bootstrap(y_true, prob, ("mcc", "accuracy"), n=n, seed=seed, groups=groups, threshold=0.5)
    samples = {
        "mcc": np.maximum(values["mcc"], 0.0),
        "accuracy": values["accuracy"],
        "reward": validator_reward(values["mcc"], values["accuracy"]),
    }
    floored = max(point["mcc"], 0.0)
    out: dict[str, Any] = {
        "mcc": floored,
        "accuracy": point["accuracy"],
        "reward": validator_reward(floored, point["accuracy"]),
    }
    for name, draws in samples.items():
        out[f"{name}_lo"], out[f"{name}_hi"] = _percentile(draws, alpha)
    return out | {
        "n": point["n"],
        "positives": point["positives"],
        "answered_roadwork": int(np.sum(np.asarray(prob) > 0.5)),
    }
