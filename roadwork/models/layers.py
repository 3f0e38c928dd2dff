"""Small building blocks shared by the models."""

from __future__ import annotations

import math

import torch
from torch import nn


def gps_sinusoidal(lat: torch.Tensor, lon: torch.Tensor, dim: int) -> torch.Tensor:
    """[B] degrees -> [B, dim] sin/cos features at geometric frequencies (coarse continent to ~km scale).

    dim/4 frequencies each for lat and lon, sin and cos; the longest period is the full circle.
    """
    if dim % 4:
        raise ValueError(f"gps encoding dim {dim} must be a multiple of 4")
    n = dim // 4
    freqs = torch.exp(
        torch.arange(n, device=lat.device, dtype=torch.float32) * (math.log(1000.0) / max(n - 1, 1))
    )
    angles = torch.cat([torch.deg2rad(lat)[:, None] * freqs, torch.deg2rad(lon)[:, None] * freqs], dim=1)
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class MLP(nn.Sequential):
    """Linear -> GELU -> Dropout -> Linear."""

    def __init__(self, d_in: int, d_hidden: int, d_out: int, dropout: float = 0.0):
        super().__init__(
            nn.Linear(d_in, d_hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(d_hidden, d_out)
        )


class InputNorm(nn.Module):
    """Per-channel standardisation of cached backbone features, fitted once on the training rows.

    Backbone channels differ in scale by orders of magnitude (max-pooled patch tokens above all); the
    statistics are buffers, so they travel with the checkpoint and prediction uses the training ones.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    @torch.no_grad()
    def fit(self, features: torch.Tensor) -> None:
        """`features` [..., dim]: statistics over every leading axis (rows, copies, views)."""
        flat = features.reshape(-1, features.shape[-1]).float()
        self.mean.copy_(flat.mean(0))
        self.std.copy_(flat.std(0).clamp_min(1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std
