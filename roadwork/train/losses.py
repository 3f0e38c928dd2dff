"""The head's four-part loss: focal + multi-view consistency + auxiliary weather + Dice on coarse masks.

`HeadLoss(weights)(outputs, batch) -> (total, {term: value})`, the signature of
`roadwork.train.loop.classification_loss`. Terms:

- focal: on the image logits, labelled rows only (label -1 is skipped). Targets are label-smoothed,
  y = (1 - eps) onehot + eps / 2; per row  -sum_c a_c (1 - p_c)^gamma y_c log p_c  with a_1 = alpha
  (roadwork) and a_0 = 1 - alpha; mean over labelled rows.
- consistency: with p_v the softmax of view v's logits and m = mean_v p_v, the mean over rows and kept
  views of KL(p_v || m) (the generalised Jensen-Shannon divergence of the views; both sides get gradient).
  It is exactly 0 when all views agree. Every row counts, labelled or not (no label is needed).
- weather: cross-entropy of `weather_logits` against batch["weather_target"] (the weather tag, kept when
  the metadata input of the row is dropped), NULL (index 0) ignored.
- dice: soft Dice 1 - (2 sum(p t) + s) / (sum p + sum t + s) per (row, kept view, prompt) coarse mask,
  p = sigmoid(mask_logits), t the batch's `masks` of the kept views, s = `dice_smooth`; mean over masks of
  rows with `mask_valid`. 0 on identical binary masks, 1 - s / (|p| + |t| + s) (~1) on disjoint ones; the
  smoothing gives empty targets a usable gradient instead of a constant 1.

Availability and weights: a term is *active* when its weight is > 0 and its inputs exist (consistency
needs `view_logits`, weather needs `weather_logits` and batch["weather_target"], dice needs `mask_logits` and
batch["masks"]). Active weights are renormalised to sum 1, so dropping a term (say, no mask cache) keeps
the loss on the same scale. A term whose inputs exist but which has no rows in this batch (all labels -1,
all weather NULL, no valid mask) is active and counts as 0, so the weighting does not change batch to batch.
The returned dict holds every active term's value and the weighted total under "loss".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

TERMS = ("focal", "consistency", "weather", "dice")
DEFAULT_WEIGHTS = {"focal": 0.40, "consistency": 0.25, "weather": 0.15, "dice": 0.20}


def _zero(like: torch.Tensor) -> torch.Tensor:
    """A 0 that stays in the graph (so a batch whose terms are all empty can still be backpropagated)."""
    return like.float().sum() * 0.0


def focal_loss(
    logits: torch.Tensor, label: torch.Tensor, *, gamma: float, alpha: float, smoothing: float
) -> torch.Tensor:
    """Mean focal loss over rows with label >= 0 (0 when there are none); 2-class logits [B, 2]."""
    labelled = label >= 0
    if not bool(labelled.any()):
        return _zero(logits)
    logits, label = logits[labelled].float(), label[labelled]
    target = F.one_hot(label, 2).float() * (1.0 - smoothing) + smoothing / 2.0
    log_p = F.log_softmax(logits, dim=1)
    class_weight = logits.new_tensor([1.0 - alpha, alpha])
    per_row = -(class_weight * (1.0 - log_p.exp()).pow(gamma) * target * log_p).sum(dim=1)
    return per_row.mean()


def consistency_loss(view_logits: torch.Tensor) -> torch.Tensor:
    """Mean over rows and views of KL(p_v || m), m = mean_u p_u; view_logits [B, V, C].

    m is computed for each v as p_v + mean_u (p_u - p_v) and both logs are taken of probabilities: the
    same value, but bitwise log p_v = log m when all views agree, so the loss is exactly 0 there rather
    than a rounding residue. Clamping at the smallest normal float keeps logs and gradients finite when a
    probability underflows.
    """
    p = F.softmax(view_logits.float(), dim=-1)
    m = p + (p[:, None] - p[:, :, None]).mean(dim=2)  # [B, V, C]; [b, v] = p_v + mean_u (p_u - p_v)
    tiny = torch.finfo(p.dtype).tiny
    return (p * (p.clamp_min(tiny).log() - m.clamp_min(tiny).log())).sum(dim=-1).mean()


def weather_loss(weather_logits: torch.Tensor, weather: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over rows whose weather is known (index > 0); 0 when every row is NULL."""
    known = weather > 0
    if not bool(known.any()):
        return _zero(weather_logits)
    return F.cross_entropy(weather_logits[known].float(), weather[known])


def soft_dice(prob: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - Dice per mask over the last two dims: [..., G, G] -> [...]."""
    inter = (prob * target).sum(dim=(-2, -1))
    total = prob.sum(dim=(-2, -1)) + target.sum(dim=(-2, -1))
    return 1.0 - (2.0 * inter + smooth) / (total + smooth)


def dice_loss(
    mask_logits: torch.Tensor,
    masks: torch.Tensor,
    view_index: torch.Tensor,
    valid: torch.Tensor | None,
    smooth: float = 1.0,
) -> torch.Tensor:
    """Soft Dice of sigmoid(mask_logits) [B, V', P, G, G] against masks [B, V, P, G, G] of the kept views."""
    if masks.shape[2:] != mask_logits.shape[2:]:
        raise ValueError(
            f"batch['masks'] has per-view shape {tuple(masks.shape[2:])} but the head decodes "
            f"{tuple(mask_logits.shape[2:])} (n_prompts, mask_grid, mask_grid): rebuild the head or the masks"
        )
    index = view_index.view(*view_index.shape, 1, 1, 1).expand(-1, -1, *masks.shape[2:])
    target = masks.gather(1, index).float()
    if valid is not None:
        valid = valid.bool()
        if not bool(valid.any()):
            return _zero(mask_logits)
        mask_logits, target = mask_logits[valid], target[valid]
    return soft_dice(torch.sigmoid(mask_logits.float()), target, smooth).mean()


class HeadLoss:
    """Weighted, renormalised sum of the four terms (see the module docstring)."""

    def __init__(
        self,
        weights: dict[str, float] | None = None,
        focal_gamma: float = 2.0,
        focal_alpha: float = 0.25,
        label_smoothing: float = 0.1,
        dice_smooth: float = 1.0,
    ):
        weights = dict(DEFAULT_WEIGHTS if weights is None else weights)
        unknown = sorted(set(weights) - set(TERMS))
        if unknown:
            raise ValueError(f"loss weights name unknown terms {unknown}; known: {list(TERMS)}")
        if any(w < 0 for w in weights.values()):
            raise ValueError(f"loss weights must be >= 0, got {weights}")
        if not 0.0 <= label_smoothing < 1.0 or not 0.0 <= focal_alpha <= 1.0:
            raise ValueError(f"label_smoothing={label_smoothing} / focal_alpha={focal_alpha} out of range")
        self.weights = {t: float(weights.get(t, 0.0)) for t in TERMS}
        self.gamma, self.alpha, self.smoothing, self.dice_smooth = (
            focal_gamma,
            focal_alpha,
            label_smoothing,
            dice_smooth,
        )

    def terms(
        self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Every active term's unweighted value."""
        active = {t for t, w in self.weights.items() if w > 0}
        out: dict[str, torch.Tensor] = {}
        if "focal" in active:
            out["focal"] = focal_loss(
                outputs["logits"],
                batch["label"],
                gamma=self.gamma,
                alpha=self.alpha,
                smoothing=self.smoothing,
            )
        if "consistency" in active and "view_logits" in outputs:
            out["consistency"] = consistency_loss(outputs["view_logits"])
        if "weather" in active and "weather_logits" in outputs and "weather_target" in batch:
            out["weather"] = weather_loss(outputs["weather_logits"], batch["weather_target"])
        if "dice" in active and "mask_logits" in outputs and "masks" in batch:
            out["dice"] = dice_loss(
                outputs["mask_logits"],
                batch["masks"],
                outputs["view_index"],
                batch.get("mask_valid"),
                self.dice_smooth,
            )
        return out

    def __call__(
        self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict]:
        terms = self.terms(outputs, batch)
        if not terms:
            raise ValueError(f"no loss term is active: weights {self.weights}, outputs {sorted(outputs)}")
        norm = sum(self.weights[t] for t in terms)
        total = sum(self.weights[t] / norm * value for t, value in terms.items())
        report = {t: float(value.detach()) for t, value in terms.items()}
        report["loss"] = float(total.detach())
        return total, report
