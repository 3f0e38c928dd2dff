"""The fold models of a cross-fitted member as one model (`roadwork.train.crossfit` trains them)."""

from __future__ import annotations

import torch
from torch import nn


class FoldMean(nn.Module):
    """The fold models of a cross-fitted member as one model: `{"logits"}` is the mean of theirs; a row
    whose batch `fold` is k >= 0 gets fold k's alone (the model that never trained on it)."""

    def __init__(self, models: list[nn.Module]):
        super().__init__()
        if not models:
            raise ValueError("FoldMean needs at least one fold model")
        self.folds = nn.ModuleList(models)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = torch.stack([m(batch)["logits"].float() for m in self.folds])  # [K, B, 2]
        out = logits.mean(dim=0)
        fold = batch.get("fold")
        if fold is not None:
            if fold.numel() and int(fold.max()) >= len(self.folds):
                raise ValueError(f"batch fold {int(fold.max())} out of range: {len(self.folds)} fold models")
            rows = torch.arange(logits.shape[1], device=logits.device)
            picked = logits[fold.clamp_min(0), rows]
            out = torch.where((fold >= 0)[:, None], picked, out)
        return {"logits": out}
