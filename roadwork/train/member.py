"""One ensemble member from tables to predictions: build the model, train it, predict val and test."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import torch
from torch import nn

from roadwork.metrics import binary_metrics
from roadwork.models import build_model
from roadwork.predictions import IMAGE_ONLY
from roadwork.train.config import TrainConfig
from roadwork.train.data import Table, Vocab
from roadwork.train.loop import TrainResult, loss_for, predict_with_model, train_with_model


def fit_member(
    *, config: TrainConfig, tables: dict[str, Table], vocab: Vocab, log: Callable[[dict], None] | None = None
) -> tuple[nn.Module, dict[str, Any], TrainResult]:
    """Build the member's model (seeded: initial weights are part of the recipe) and train it."""
    train = tables["train"]
    mask_shape = None if train.masks is None else (train.masks.shape[2], train.masks.shape[3])
    spec = config.model_spec(
        view_dim=train.features.shape[-1],
        n_views=train.features.shape[2],
        vocab_sizes=vocab.sizes(),
        mask_shape=mask_shape,
    )
    torch.manual_seed(config.seed)
    model = build_model(spec)
    result = train_with_model(
        model=model, train=train, val=tables["val"], config=config, loss_fn=loss_for(config), log=log
    )
    return model, spec, result


def write_predictions(
    *, model: nn.Module, tables: dict[str, Table], config: TrainConfig, out_dir: Path
) -> tuple[dict[str, dict[str, float]], dict[str, pl.DataFrame]]:
    """`<out_dir>/val.parquet` and `test.parquet`, and the same rows without their metadata
    (`val_image_only.parquet`, `test_image_only.parquet`: what the member answers the images as plain
    files); the headline metrics of each where labelled, and the labelled rows of val and test (plots)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary, labelled_parts = {}, {}
    for part in ("val", "test"):
        for name, table in ((part, tables[part]), (f"{part}_{IMAGE_ONLY}", tables[part].without_metadata())):
            frame = table.predictions(part, predict_with_model(model=model, table=table, config=config))
            frame.write_parquet(out_dir / f"{name}.parquet")
            labelled = frame.filter(pl.col("label").is_not_null())
            if len(labelled):
                scores = binary_metrics(labelled["label"].to_numpy(), labelled["prob"].to_numpy())
                summary[name] = {k: scores[k] for k in ("mcc", "accuracy", "roc_auc", "f1")}
                if name == part:
                    labelled_parts[part] = labelled
    return summary, labelled_parts
