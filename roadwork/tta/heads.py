"""FOODS on a member's head: per augmentation, the head's logit and fused embedding, its distance to the
training rows' clean embeddings, then the weighted mean probability per image.

A member is predicted in one or two *variants*: `plain` (its trained head) and, where `finetune` adapted
it, `dora` (each row through the fold model that held it out, or the mean over the fold models for rows
no fold held out). Each model gets its own training distribution: the member's training rows (the ones
its head was fitted on) through that model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl
import torch
from torch import nn

from roadwork.train.config import TrainConfig
from roadwork.train.data import Table, train_val_rows, view_features
from roadwork.tta import TtaConfig
from roadwork.tta.foods import DistanceModel, fit_distance, foods_probability


@torch.no_grad()
def head_outputs(
    model: nn.Module, table: Table, config: TrainConfig, batch_size: int = 512
) -> tuple[np.ndarray, np.ndarray]:
    """(roadwork log-odds [n], fused embedding [n, W]) on the clean copy, as `predict_with_model`."""
    device = next(model.parameters()).device
    model.eval()
    logits, embeddings = [], []
    for start in range(0, len(table), batch_size):
        batch = table.batch(np.arange(start, min(start + batch_size, len(table))))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.amp == "bf16"):
            out = model({k: v.to(device) for k, v in batch.items()})
        if "embedding" not in out:
            raise ValueError(f"{type(model).__name__} returns no 'embedding': FOODS needs a full head")
        pair = out["logits"].float()
        logits.append((pair[:, 1] - pair[:, 0]).cpu().numpy())
        embeddings.append(out["embedding"].float().cpu().numpy())
    return np.concatenate(logits), np.concatenate(embeddings)


def with_tokens(table: Table, tokens: np.ndarray, config: TrainConfig) -> Table:
    """`table` with its features replaced by one augmentation's cached tokens [n, V, 3, D], picked and
    concatenated as the feature cache serves them to this member (token set, views)."""
    features = view_features(tokens, config)
    return Table(
        table.image_id, features[:, None], np.ones(len(table), np.int64), table.label, table.meta, table.group
    )


@dataclass
class Variant:
    """One way to predict a member's rows: models, and which model predicts each row."""

    name: str  # plain | dora
    models: list[nn.Module]
    assignment: np.ndarray  # [n] model index per row; -1: the mean over all models
    distances: list[DistanceModel] = field(default_factory=list)
    logits: list[np.ndarray] = field(default_factory=list)  # per augmentation: [n]
    distance: list[np.ndarray] = field(default_factory=list)  # per augmentation: [n]

    def combine(self, per_model: np.ndarray) -> np.ndarray:
        """[M, n] per-model values -> [n]: the assigned model's, or the mean over models."""
        mean = per_model.mean(axis=0)
        picked = per_model[np.clip(self.assignment, 0, None), np.arange(per_model.shape[1])]
        return np.where(self.assignment >= 0, picked, mean)


class MemberTTA:
    """Accumulates one member's per-augmentation logits and distances, then applies FOODS."""

    def __init__(
        self,
        name: str,
        *,
        config: TrainConfig,
        rows: Table,
        train: Table,
        variants: list[Variant],
        tta: TtaConfig,
    ):
        self.name, self.config, self.rows, self.variants, self.tta = name, config, rows, variants, tta
        for variant in variants:
            if variant.assignment.shape != (len(rows),):
                raise ValueError(f"{name}/{variant.name}: assignment does not match the {len(rows)} rows")
            variant.distances = [
                fit_distance(
                    head_outputs(m, train, config)[1], tta.distance, k=tta.knn_k, shrinkage=tta.shrinkage
                )
                for m in variant.models
            ]

    def add(self, tokens: np.ndarray) -> None:
        """Score the next augmentation (its cached tokens for `rows`, in order) with every variant."""
        table = with_tokens(self.rows, tokens, self.config)
        for variant in self.variants:
            logit, dist = [], []
            for model, distance in zip(variant.models, variant.distances, strict=True):
                lg, emb = head_outputs(model, table, self.config)
                logit.append(lg)
                dist.append(distance(emb))
            variant.logits.append(variant.combine(np.stack(logit)))
            variant.distance.append(variant.combine(np.stack(dist)))

    def frames(self, part: str) -> dict[str, tuple[pl.DataFrame, np.ndarray]]:
        """Per variant: the prediction frame (member columns + member, kept, top_weight, weighted_distance)
        and the weights [n, N]."""
        out = {}
        for variant in self.variants:
            logits, distance = np.stack(variant.logits, axis=1), np.stack(variant.distance, axis=1)
            prob, weights = foods_probability(logits, distance, self.tta.keep, self.tta.temperature)
            clipped = np.clip(prob, 1e-12, 1.0 - 1e-12)
            frame = self.rows.predictions(part, np.log(clipped / (1.0 - clipped)))
            frame = frame.with_columns(
                prob=pl.Series(prob),  # exact, not re-derived from the clipped logit
                member=pl.lit(self.name),
                kept=pl.Series((weights > 0).sum(axis=1), dtype=pl.Int64),
                top_weight=pl.Series(weights.max(axis=1)),
                weighted_distance=pl.Series((weights * distance).sum(axis=1)),
            )
            out[variant.name] = (frame, weights)
        return out


def training_rows(index: pl.DataFrame, config: TrainConfig) -> pl.DataFrame:
    """The index rows the member's head was fitted on (its grouped validation rows left out), as
    `roadwork.train.data.prepare_tables` chose them."""
    return train_val_rows(index, config.val_fraction, config.split_seed)[0]


def fold_assignment(image_ids: list[str], oof: pl.DataFrame) -> np.ndarray:
    """Per row, the fold that held it out in `oof` (finetune's oof.parquet), -1 where none did."""
    joined = pl.DataFrame({"image_id": image_ids}).join(
        oof.select("image_id", "fold"), on="image_id", how="left", maintain_order="left"
    )
    return joined["fold"].fill_null(-1).to_numpy().astype(np.int64)
