"""Heads that train on cached view features. Models take tensors, never paths."""

from __future__ import annotations

from typing import Any

from torch import nn

from roadwork.models.baseline import BaselineMLP
from roadwork.models.head import RoadworkHead


def build_model(spec: dict[str, Any]) -> nn.Module:
    """A model from its spec (saved in every checkpoint, so a head can be rebuilt without params.yaml).

    spec: {"model": "mlp", "view_dim": D, "n_views": V, "vocab_sizes": {...}, "hidden": H,
           "dropout": p, "metadata": bool, "pool": "meanmax" | "views"}
    or {"model": "head", ...}: the full head, keys documented in `roadwork.models.head`.
    """
    if spec["model"] == "mlp":
        return BaselineMLP(
            view_dim=spec["view_dim"],
            n_views=spec["n_views"],
            vocab_sizes=spec["vocab_sizes"],
            hidden=spec["hidden"],
            dropout=spec["dropout"],
            metadata=spec["metadata"],
            pool=spec["pool"],
        )
    if spec["model"] == "head":
        return RoadworkHead(spec)
    raise ValueError(f"unknown model {spec['model']!r}; expected one of ['head', 'mlp']")
