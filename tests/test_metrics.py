"""Binary metrics, calibration, reward proxy and bootstrap intervals."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, brier_score_loss, f1_score, matthews_corrcoef, roc_auc_score

from roadwork import metrics as M
from roadwork.metrics import (
    CI_METRICS,
    METRICS,
    binary_metrics,
    expected_calibration_error,
    mcc,
    metrics_with_ci,
    reward_proxy,
    sigmoid,
)


def bootstrap_ci(y, p, name, *, n=1000, seed=0, groups=None, alpha=0.05) -> tuple[float, float]:
    """One metric's interval from `metrics_with_ci`."""
    out = metrics_with_ci(y, p, n=n, seed=seed, groups=groups, alpha=alpha)
    return out[f"{name}_lo"], out[f"{name}_hi"]


def sample(n: int, seed: int = 0, signal: float = 0.35) -> tuple[np.ndarray, np.ndarray]:
    """Labels and informative probabilities."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = np.clip(0.5 + signal * (2 * y - 1) + rng.normal(0, 0.3, n), 0, 1)
    return y, p


@pytest.mark.parametrize("seed", range(5))
def test_mcc_matches_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = (rng.random(300) < rng.uniform(0.1, 0.9)).astype(int)
    pred = (rng.random(300) < rng.uniform(0.1, 0.9)).astype(int)
    pred[:200] = y[:200]  # some agreement, not total
    assert mcc(y, pred) == pytest.approx(matthews_corrcoef(y, pred), abs=1e-12)


def test_mcc_undefined_is_zero() -> None:
    y = np.array([0, 1, 1, 0])
    assert mcc(y, np.ones(4, dtype=int)) == 0.0  # one class predicted
    assert mcc(np.ones(4, dtype=int), y) == 0.0  # one class present
    assert mcc(y, y) == 1.0 and mcc(y, 1 - y) == -1.0


def test_ece_by_hand() -> None:
    y, p = [0, 1, 1, 0], [0.1, 0.2, 0.9, 0.95]
    # bin [0, .5): mean y .5, mean p .15 -> .35 * 2/4; bin [.5, 1]: .5 vs .925 -> .425 * 2/4
    assert expected_calibration_error(y, p, bins=2) == pytest.approx(0.175 + 0.2125)
    assert expected_calibration_error([1, 0, 1], [1.0, 0.0, 1.0]) == 0.0  # p = 1 lands in the last bin
    assert expected_calibration_error([1, 0], [0.5, 0.5], bins=1) == 0.0
    # 15 bins: 0.1 and 0.2 fall in different bins, 0.9 and 0.95 too (bins 13 and 14)
    assert expected_calibration_error(y, p) == pytest.approx((0.1 + 0.8 + 0.1 + 0.95) / 4)


def test_reward_proxy_values() -> None:
    assert reward_proxy(1.0, 1.0) == 1.0
    assert reward_proxy(0.0, 0.5) == pytest.approx(0.25**3)
    assert reward_proxy(0.5, 0.8) == pytest.approx(0.65**3)
    assert reward_proxy(-1.0, 0.0) == 0.0  # negative base clipped
    assert reward_proxy(-0.6, 0.4) == 0.0
    np.testing.assert_allclose(reward_proxy(np.array([1.0, 0.0]), np.array([1.0, 0.5])), [1.0, 0.015625])


def test_binary_metrics_against_sklearn() -> None:
    y, p = sample(500, seed=3)
    m = binary_metrics(y, p, threshold=0.6)
    pred = (p > 0.6).astype(int)
    assert m["mcc"] == pytest.approx(matthews_corrcoef(y, pred))
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["f1"] == pytest.approx(f1_score(y, pred))
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, p))
    assert m["brier"] == pytest.approx(brier_score_loss(y, p))
    assert m["reward"] == pytest.approx((0.5 * m["mcc"] + 0.5 * m["accuracy"]) ** 3)
    assert (m["n"], m["positives"], m["threshold"]) == (500, int(y.sum()), 0.6)
    assert set(METRICS) <= set(m)


def test_binary_metrics_threshold_is_strict_and_one_class() -> None:
    m = binary_metrics([1, 0], [0.5, 0.2])
    assert m["accuracy"] == 0.5 and m["f1"] == 0.0  # 0.5 is not > 0.5
    one = binary_metrics([1, 1, 1], [0.9, 0.2, 0.7])
    assert one["roc_auc"] is None
    assert one["mcc"] == 0.0


def test_input_errors() -> None:
    with pytest.raises(ValueError, match="row 1 is 2"):
        binary_metrics([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match=r"prob: must be finite and in \[0, 1\]; row 0 is"):
        binary_metrics([0, 1], [1.5, 0.2])
    with pytest.raises(ValueError, match="differs from y_true"):
        binary_metrics([0, 1], [0.5])
    with pytest.raises(ValueError, match="no rows"):
        binary_metrics([], [])
    with pytest.raises(ValueError, match="unknown"):
        M._weighted_metrics(np.array([0, 1]), np.array([0.1, 0.9]), np.ones((1, 2)), 0.5, ["precision"])
    with pytest.raises(ValueError, match="row 1 has no group"):
        bootstrap_ci([0, 1], [0.1, 0.9], "mcc", groups=["a", None])


def test_weighted_metrics_equal_explicit_resample() -> None:
    """The vectorised bootstrap path computes exactly the metrics of the resampled rows."""
    y, p = sample(300, seed=5)
    p = np.round(p, 1)  # ties exercise the AUC tie handling
    rng = np.random.default_rng(9)
    for _ in range(3):
        idx = rng.integers(0, len(y), len(y))
        counts = np.bincount(idx, minlength=len(y))[None, :]
        got = M._weighted_metrics(y, p, counts, 0.5, METRICS)
        want = binary_metrics(y[idx], p[idx])
        for name in METRICS:
            assert got[name][0] == pytest.approx(want[name], abs=1e-12), name


def test_bootstrap_contains_point_and_is_deterministic() -> None:
    y, p = sample(400, seed=1)
    point = binary_metrics(y, p)
    for name in ("mcc", "accuracy", "roc_auc", "brier", "reward", "f1"):
        lo, hi = bootstrap_ci(y, p, name, n=500, seed=2)
        assert lo < point[name] < hi, name
    assert bootstrap_ci(y, p, "mcc", n=200, seed=4) == bootstrap_ci(y, p, "mcc", n=200, seed=4)
    assert bootstrap_ci(y, p, "mcc", n=200, seed=4) != bootstrap_ci(y, p, "mcc", n=200, seed=5)
    lo90, hi90 = bootstrap_ci(y, p, "mcc", n=500, seed=2, alpha=0.5)
    lo95, hi95 = bootstrap_ci(y, p, "mcc", n=500, seed=2)
    assert lo95 < lo90 < hi90 < hi95


def test_bootstrap_narrows_with_more_rows() -> None:
    widths = []
    for n_rows in (200, 3200):
        y, p = sample(n_rows, seed=n_rows)
        lo, hi = bootstrap_ci(y, p, "mcc", n=400, seed=0)
        widths.append(hi - lo)
    assert widths[1] < 0.5 * widths[0]  # 16x the rows: about a quarter of the width


def test_grouped_bootstrap_wider_on_duplicated_rows() -> None:
    y, p = sample(100, seed=7, signal=0.2)
    dup = 10  # each row repeated, like frames of one video
    yd, pd_, groups = np.repeat(y, dup), np.repeat(p, dup), np.repeat(np.arange(100), dup)
    lo_r, hi_r = bootstrap_ci(yd, pd_, "accuracy", n=500, seed=0)
    lo_g, hi_g = bootstrap_ci(yd, pd_, "accuracy", n=500, seed=0, groups=groups)
    lo_o, hi_o = bootstrap_ci(y, p, "accuracy", n=500, seed=0)
    assert hi_g - lo_g > 2 * (hi_r - lo_r)  # about sqrt(10) wider
    # grouping recovers the interval of the 100 independent rows
    assert hi_g - lo_g == pytest.approx(hi_o - lo_o, rel=0.3)


def test_metrics_with_ci() -> None:
    y, p = sample(300, seed=2)
    out = metrics_with_ci(y, p, threshold=0.5, n=300, seed=0, groups=np.arange(300) // 3)
    for name in CI_METRICS:
        lo, hi = out[f"{name}_lo"], out[f"{name}_hi"]
        assert lo <= out[name] <= hi, name
    assert out["n"] == 300 and out["mcc"] == binary_metrics(y, p)["mcc"]
    one = metrics_with_ci(
        np.ones(20, dtype=int), np.linspace(0, 1, 20), threshold=0.5, n=50, seed=0, groups=None
    )
    assert one["roc_auc"] is None and one["roc_auc_lo"] is None and one["roc_auc_hi"] is None
    assert one["accuracy_lo"] <= one["accuracy"] <= one["accuracy_hi"]


def test_sigmoid_is_the_logistic_function_in_float64() -> None:
    x = np.array([-800.0, -2.0, 0.0, 2.0, 800.0])
    want = np.array([0.0, 1 / (1 + np.e**2), 0.5, 1 / (1 + np.e**-2), 1.0])
    np.testing.assert_allclose(sigmoid(x), want, rtol=1e-15, atol=0)
    assert sigmoid(np.float32(3.0)).dtype == np.float64


def test_validator_rounds_at_one_half_floors_mcc_and_cubes_the_reward() -> None:
    y = np.array([1, 1, 0, 0])
    # exactly 0.5 is "no roadwork": answers 1, 0, 0, 0 -> tp 1, fn 1, tn 2
    out = M.validator_metrics(y, np.array([0.9, 0.5, 0.5, 0.1]), n=50)
    assert out["accuracy"] == 0.75 and out["answered_roadwork"] == 1
    assert out["mcc"] == pytest.approx(1 / np.sqrt(3))
    assert out["reward"] == pytest.approx((0.5 / np.sqrt(3) + 0.5 * 0.75) ** 3)
    # worse than chance: MCC -1 floors at 0, the reward is (0.5 * 0 + 0.5 * 0) ** 3
    inverted = M.validator_metrics(y, np.array([0.1, 0.2, 0.9, 0.8]), n=50)
    assert inverted["mcc"] == 0.0 and inverted["accuracy"] == 0.0 and inverted["reward"] == 0.0
    # one class answered: MCC 0, accuracy 0.5
    constant = M.validator_metrics(y, np.full(4, 0.7), n=50)
    assert constant["mcc"] == 0.0 and constant["reward"] == pytest.approx(0.25**3)
    assert M.validator_reward(1.0, 1.0) == 1.0 and M.validator_reward(-0.5, 0.4) == pytest.approx(0.2**3)
    assert inverted["mcc_lo"] >= 0.0 and out["reward_lo"] <= out["reward"] <= out["reward_hi"]
