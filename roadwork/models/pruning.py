"""View pruning: score each view with a small MLP, keep the top k = round(keep_ratio * V).

The selection is hard in both modes (the same views are kept in training and at inference, so the two
modes compute the same function). Training stays differentiable by a straight-through estimator: the
kept views are multiplied by `1 + s - stop_grad(s)` (s = sigmoid importance), which is exactly 1 in the
forward pass and passes d loss / d s = <d loss / d view, view> to the scorer in the backward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


def kept_count(n_views: int, keep_ratio: float) -> int:
    """k = round(keep_ratio * V), at least 1 and at most V (0.67 of 12 views -> 8)."""
    return max(1, min(n_views, round(keep_ratio * n_views)))


@dataclass
class Pruned:
    """What pruning returns."""

    views: torch.Tensor  # [B, k, D] kept views, in ascending view order
    index: torch.Tensor  # [B, k] int64 view index of each kept view
    keep: torch.Tensor  # [B, V] 0/1 mask of kept views (training: carries the straight-through gradient)
    scores: torch.Tensor  # [B, V] sigmoid importance (ones when pruning is off)


class ViewPruning(nn.Module):
    """Importance MLP D -> D/4 -> 1 over views and a hard top-k with a straight-through gradient.

    enabled=False keeps every view and has no parameters.
    """

    def __init__(self, dim: int, keep_ratio: float, *, enabled: bool = True):
        super().__init__()
        if not 0.0 < keep_ratio <= 1.0:
            raise ValueError(f"keep_ratio={keep_ratio}: expected a fraction in (0, 1]")
        self.keep_ratio, self.enabled = keep_ratio, enabled
        hidden = max(1, dim // 4)
        self.importance = (
            nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, 1)) if enabled else None
        )

    def forward(self, views: torch.Tensor) -> Pruned:
        b, n, _ = views.shape
        if self.importance is None:
            index = torch.arange(n, device=views.device).expand(b, n)
            ones = views.new_ones(b, n)
            return Pruned(views, index, ones, ones)
        logits = self.importance(views).squeeze(-1).float()  # [B, V]
        scores = torch.sigmoid(logits)
        index = logits.topk(kept_count(n, self.keep_ratio), dim=1).indices.sort(dim=1).values
        hard = torch.zeros_like(scores).scatter(1, index, 1.0)
        # parenthesised so the forward value is exactly 1 (0 + x - x is 0; (1 + x) - x may not be 1)
        keep = hard + (scores - scores.detach()) if self.training else hard
        kept = views.gather(1, index[..., None].expand(-1, -1, views.shape[-1]))
        kept = kept * keep.gather(1, index)[..., None].to(kept.dtype)
        return Pruned(kept, index, keep, scores)
