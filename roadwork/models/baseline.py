"""The honest baseline: views pooled (mean and max) or laid side by side, metadata concatenated, an MLP.

It stays in every ablation table as the row the full head has to beat. `pool="views"` concatenates the
V views in their fixed order (global view, then the tiles row by row), as a linear probe on the
concatenated views does: each part of the frame gets its own weights, which pooling takes away.
`hidden=0` makes it that linear probe itself: a logistic regression on the normalised vector.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from roadwork.models.layers import MLP, InputNorm, gps_sinusoidal

GPS_DIM = 32
TEXT_DIM = 384
POOLS = ("meanmax", "views")  # how the views become one vector: mean and max | concatenated in order


class BaselineMLP(nn.Module):
    """[B, V, D] view features + metadata -> {"logits": [B, 2]}."""

    def __init__(
        self,
        *,
        view_dim: int,
        n_views: int,
        vocab_sizes: dict[str, int],
        hidden: int,
        dropout: float,
        metadata: bool,
        pool: str = "meanmax",
    ):
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"pool={pool!r}: expected one of {POOLS}")
        self.metadata, self.pool = metadata, pool
        self.vocab_sizes = dict(vocab_sizes)
        meta_dim = GPS_DIM + 1 + sum(self.vocab_sizes.values()) + TEXT_DIM + 1 if metadata else 0
        pooled_dim = (2 if pool == "meanmax" else n_views) * view_dim
        self.input_norm = InputNorm(view_dim)
        self.norm = nn.LayerNorm(pooled_dim)
        # hidden 0: a logistic regression (the linear probe; weight decay is its L2 penalty)
        self.mlp = (
            MLP(pooled_dim + meta_dim, hidden, 2, dropout)
            if hidden
            else nn.Sequential(nn.Dropout(dropout), nn.Linear(pooled_dim + meta_dim, 2))
        )

    def meta_vector(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """GPS sin/cos (zeros + flag when absent), one-hot categories (NULL is its own class), text + flag."""
        gps_mask = batch["gps_mask"].float()[:, None]
        parts = [gps_sinusoidal(batch["lat"], batch["lon"], GPS_DIM) * gps_mask, gps_mask]
        for name, key in (("weather", "weather"), ("daytime", "daytime"), ("scene_environment", "scene")):
            parts.append(F.one_hot(batch[key], self.vocab_sizes[name]).float())
        text_mask = batch["text_mask"].float()[:, None]
        parts += [batch["text"] * text_mask, text_mask]
        return torch.cat(parts, dim=1)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        views = self.input_norm(batch["views"])
        if self.pool == "meanmax":
            pooled = self.norm(torch.cat([views.mean(dim=1), views.amax(dim=1)], dim=1))
        else:
            pooled = self.norm(views.flatten(1))
        x = torch.cat([pooled, self.meta_vector(batch)], dim=1) if self.metadata else pooled
        return {"logits": self.mlp(x)}
