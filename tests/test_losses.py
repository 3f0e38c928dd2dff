"""The head's loss terms against explicit references, and the weighting / availability rules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from roadwork.train.losses import (
    HeadLoss,
    consistency_loss,
    dice_loss,
    focal_loss,
    soft_dice,
    weather_loss,
)


def focal_reference(logits: np.ndarray, label: np.ndarray, gamma: float, alpha: float, eps: float) -> float:
    """Per-sample focal loss with smoothed targets, written out in float64, mean over labelled rows."""
    losses = []
    for row, y in zip(logits, label, strict=True):
        if y < 0:
            continue
        z = row - row.max()
        p = np.exp(z) / np.exp(z).sum()
        target = [eps / 2 + (1 - eps) * (c == y) for c in (0, 1)]
        weight = [1 - alpha, alpha]
        losses.append(-sum(weight[c] * (1 - p[c]) ** gamma * target[c] * math.log(p[c]) for c in (0, 1)))
    return float(np.mean(losses))


def test_focal_matches_the_reference():
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=3.0, size=(20, 2)).astype(np.float32)
    label = rng.integers(-1, 2, 20)
    got = focal_loss(torch.from_numpy(logits), torch.from_numpy(label), gamma=2.0, alpha=0.25, smoothing=0.1)
    assert got.item() == pytest.approx(focal_reference(logits, label, 2.0, 0.25, 0.1), rel=1e-5)
    other = focal_loss(torch.from_numpy(logits), torch.from_numpy(label), gamma=1.0, alpha=0.6, smoothing=0.0)
    assert other.item() == pytest.approx(focal_reference(logits, label, 1.0, 0.6, 0.0), rel=1e-5)


def test_focal_reduces_to_half_cross_entropy_and_skips_unlabelled_rows():
    logits = torch.randn(10, 2)
    label = torch.tensor([0, 1, -1, 1, 0, -1, 1, 1, 0, 0])
    got = focal_loss(logits, label, gamma=0.0, alpha=0.5, smoothing=0.0)
    keep = label >= 0
    assert got.item() == pytest.approx(0.5 * F.cross_entropy(logits[keep], label[keep]).item(), rel=1e-6)
    none = focal_loss(logits, torch.full((10,), -1), gamma=2.0, alpha=0.25, smoothing=0.1)
    assert none.item() == 0.0


def test_consistency_is_exactly_zero_when_views_agree():
    logits = torch.randn(5, 1, 2).expand(5, 8, 2).contiguous() * 4
    assert consistency_loss(logits).item() == 0.0


def test_consistency_is_the_mean_kl_to_the_mean_prediction():
    logits = torch.randn(4, 6, 2, dtype=torch.float64)
    p = logits.softmax(-1).numpy()
    mean = p.mean(axis=1, keepdims=True)
    expected = (p * (np.log(p) - np.log(mean))).sum(-1).mean()
    got = consistency_loss(logits)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert got.item() > 0


def test_consistency_stays_finite_on_saturated_views():
    logits = torch.tensor(
        [[[100.0, -100.0], [-100.0, 100.0]], [[300.0, 0.0], [300.0, 0.0]]], requires_grad=True
    )
    loss = consistency_loss(logits)
    loss.backward()
    # row 0: two certain, opposite views: JS divergence log 2 (halved by the mean over rows); row 1 agrees: 0
    assert loss.item() == pytest.approx(math.log(2.0) / 2, rel=1e-5)
    assert torch.isfinite(logits.grad).all()


def test_weather_ignores_null_and_is_zero_when_all_null():
    logits = torch.randn(6, 4, requires_grad=True)
    weather = torch.tensor([0, 2, 1, 0, 3, 0])
    known = weather > 0
    assert weather_loss(logits, weather).item() == pytest.approx(
        F.cross_entropy(logits[known], weather[known]).item(), rel=1e-6
    )
    zero = weather_loss(logits, torch.zeros(6, dtype=torch.long))
    assert zero.item() == 0.0 and torch.isfinite(zero)
    zero.backward()  # stays in the graph
    assert torch.equal(logits.grad, torch.zeros(6, 4))


def test_dice_is_zero_on_identical_and_one_on_disjoint_masks():
    target = torch.zeros(3, 16, 16)
    target[:, :8] = 1.0
    assert torch.equal(soft_dice(target, target), torch.zeros(3))
    disjoint = soft_dice(1.0 - target, target)
    assert torch.allclose(disjoint, torch.full((3,), 1.0 - 1.0 / 257.0))  # 1 - s / (|p| + |t| + s), s = 1
    assert (disjoint > 0.99).all()
    assert torch.allclose(soft_dice(1.0 - target, target, smooth=0.0), torch.ones(3))
    assert torch.equal(soft_dice(torch.zeros(2, 4, 4), torch.zeros(2, 4, 4)), torch.zeros(2))  # both empty


def test_dice_loss_compares_the_kept_views_of_valid_rows():
    torch.manual_seed(0)
    masks = (torch.rand(4, 6, 2, 4, 4) > 0.5).float()
    index = torch.tensor([[0, 2, 5], [1, 3, 4], [0, 1, 2], [3, 4, 5]])
    kept = masks.gather(1, index.view(4, 3, 1, 1, 1).expand(-1, -1, 2, 4, 4))
    perfect = (kept * 2 - 1) * 50.0  # sigmoid -> the target, to float precision
    valid = torch.tensor([True, True, False, True])
    assert dice_loss(perfect, masks, index, valid).item() == pytest.approx(0.0, abs=1e-6)
    wrong = perfect.clone()
    wrong[2] = -wrong[2]  # an invalid row may be anything
    assert dice_loss(wrong, masks, index, valid).item() == pytest.approx(0.0, abs=1e-6)
    assert dice_loss(wrong, masks, index, None).item() > 0.1
    shifted = torch.tensor([[1, 2, 5], [1, 3, 4], [0, 1, 2], [3, 4, 5]])
    assert dice_loss(perfect, masks, shifted, valid).item() > 0.01  # another view's target differs
    none = dice_loss(perfect, masks, index, torch.zeros(4, dtype=torch.bool))
    assert none.item() == 0.0


def test_dice_rejects_a_grid_mismatch():
    with pytest.raises(ValueError, match=r"n_prompts, mask_grid"):
        dice_loss(
            torch.zeros(2, 3, 2, 8, 8), torch.zeros(2, 6, 2, 4, 4), torch.zeros(2, 3, dtype=torch.long), None
        )


def outputs_and_batch(masks: bool) -> tuple[dict, dict]:
    torch.manual_seed(1)
    outputs = {
        "logits": torch.randn(6, 2, requires_grad=True),
        "view_logits": torch.randn(6, 3, 2, requires_grad=True),
        "weather_logits": torch.randn(6, 4, requires_grad=True),
        "view_index": torch.tensor([[0, 1, 3]] * 6),
    }
    batch = {"label": torch.tensor([0, 1, 1, -1, 0, 1]), "weather_target": torch.tensor([1, 0, 2, 3, 0, 1])}
    if masks:
        outputs["mask_logits"] = torch.randn(6, 3, 2, 4, 4, requires_grad=True)
        batch["masks"] = (torch.rand(6, 4, 2, 4, 4) > 0.5).float()
        batch["mask_valid"] = torch.tensor([True] * 5 + [False])
    return outputs, batch


def test_total_is_the_weighted_sum_of_the_reported_terms():
    outputs, batch = outputs_and_batch(masks=True)
    total, parts = HeadLoss()(outputs, batch)
    assert set(parts) == {"focal", "consistency", "weather", "dice", "loss"}
    expected = (
        0.40 * parts["focal"] + 0.25 * parts["consistency"] + 0.15 * parts["weather"] + 0.20 * parts["dice"]
    )
    assert total.item() == pytest.approx(expected, rel=1e-5) and parts["loss"] == pytest.approx(total.item())
    total.backward()
    assert all(
        outputs[k].grad.abs().sum() > 0 for k in ("logits", "view_logits", "weather_logits", "mask_logits")
    )


def test_missing_masks_and_zero_weights_renormalise():
    outputs, batch = outputs_and_batch(masks=False)
    total, parts = HeadLoss()(outputs, batch)
    assert "dice" not in parts
    expected = (0.40 * parts["focal"] + 0.25 * parts["consistency"] + 0.15 * parts["weather"]) / 0.80
    assert total.item() == pytest.approx(expected, rel=1e-5)
    total, parts = HeadLoss({"focal": 0.4, "consistency": 0.0, "weather": 0.1})(outputs, batch)
    assert set(parts) == {"focal", "weather", "loss"}
    assert total.item() == pytest.approx(0.8 * parts["focal"] + 0.2 * parts["weather"], rel=1e-5)


def test_baseline_outputs_get_the_focal_term_alone():
    outputs, batch = outputs_and_batch(masks=False)
    total, parts = HeadLoss()({"logits": outputs["logits"]}, batch)
    assert set(parts) == {"focal", "loss"} and total.item() == pytest.approx(parts["focal"])


def test_bad_weights_are_rejected():
    with pytest.raises(ValueError, match=r"unknown terms \['focla'\]"):
        HeadLoss({"focla": 1.0})
    with pytest.raises(ValueError, match=">= 0"):
        HeadLoss({"focal": -1.0})
    with pytest.raises(ValueError, match="no loss term is active"):
        HeadLoss({"dice": 1.0})(*outputs_and_batch(masks=False))
