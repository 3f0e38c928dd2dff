"""Projection of view features to the head width, and the multi-scale pyramid on top of it."""

from __future__ import annotations

import torch
from torch import nn


class ProjectionPyramid(nn.Module):
    """D -> width; pyramid on: branches width, width/2, width/4 -> concat -> width, + residual, LayerNorm.

    For width 512 the branches are 512 / 256 / 128 and the concat is 896. Each branch is Linear + GELU: the
    narrow ones are bottlenecks that keep only the dominant directions of a view, the wide one keeps detail.
    pyramid=False is the projection alone (no branch, merge or norm parameters).
    """

    def __init__(self, view_dim: int, width: int, *, pyramid: bool = True):
        super().__init__()
        if width % 4:
            raise ValueError(
                f"head width {width} must be a multiple of 4 (pyramid branches width/2, width/4)"
            )
        self.proj = nn.Linear(view_dim, width)
        self.branches: nn.ModuleList | None = None
        if pyramid:
            sizes = (width, width // 2, width // 4)
            self.branches = nn.ModuleList(nn.Sequential(nn.Linear(width, s), nn.GELU()) for s in sizes)
            self.merge = nn.Linear(sum(sizes), width)
            self.norm = nn.LayerNorm(width)

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        """[B, V, D] -> [B, V, width]."""
        x = self.proj(views)
        if self.branches is None:
            return x
        return self.norm(x + self.merge(torch.cat([branch(x) for branch in self.branches], dim=-1)))
