"""The honest baseline: views pooled (mean and max), metadata concatenated, an MLP.

It stays in every ablation table as the row the full head has to beat.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from roadwork.models.layers import MLP, InputNorm, gps_sinusoidal

GPS_DIM = 32
TEXT_DIM = 384


class BaselineMLP(nn.Module):
    """[B, V, D] view features + metadata -> {"logits": [B, 2]}."""

    def __init__(
        self, *, view_dim: int, vocab_sizes: dict[str, int], hidden: int, dropout: float, metadata: bool
    ):
        super().__init__()
        self.metadata = metadata
        self.vocab_sizes = dict(vocab_sizes)
        meta_dim = GPS_DIM + 1 + sum(self.vocab_sizes.values()) + TEXT_DIM + 1 if metadata else 0
        self.input_norm = InputNorm(view_dim)
        self.norm = nn.LayerNorm(2 * view_dim)
        self.mlp = MLP(2 * view_dim + meta_dim, hidden, 2, dropout)

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
        pooled = self.norm(torch.cat([views.mean(dim=1), views.amax(dim=1)], dim=1))
        x = torch.cat([pooled, self.meta_vector(batch)], dim=1) if self.metadata else pooled
        return {"logits": self.mlp(x)}
