"""One trained member, end to end through DoRA (`roadwork.train.dora`): its Table, the K-fold cross-fit,
the written adapters and prediction frames, and the before / after summary.

Outputs per member (see `stages/finetune.py`): `<dora>/<member>/fold<k>/`, `folds.parquet`;
`<dora_predictions>/<member>/oof.parquet` (every adaptation-split row) and `val.parquet` / `test.parquet`
(the rows of the member's own prediction files: out of fold where a fold held the row out, else the fold
average); the metrics dict the stage collects into `finetune.json`.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from roadwork.config import Paths
from roadwork.data.index import rows_for
from roadwork.features.cache import FeatureCache
from roadwork.metrics import compare, sigmoid
from roadwork.predictions import average_logits, read_predictions
from roadwork.train.checkpoint import SavedHead
from roadwork.train.data import Table
from roadwork.train.dora import (
    CrossFit,
    FinetuneConfig,
    adapter_report,
    cross_fit,
    fold_average,
    save_cross_fit,
)
from roadwork.train.loop import predict_with_model

PARTS = ("val", "test")  # the member prediction files that get an adapted counterpart


def fold_summary(fit: CrossFit) -> dict[str, dict]:
    """Per fold: rows, epochs run, best epoch, inner-validation MCC before and after."""
    return {
        f"fold{run.fold}": {
            "fit_rows": len(run.fit),
            "val_rows": len(run.val),
            "heldout_rows": len(run.heldout),
            "epochs_run": run.result.epochs_run,
            "best_epoch": run.result.best_epoch,
            "val_mcc_before": run.val_mcc_before,
            "val_mcc_after": run.result.best_val_mcc,
        }
        for run in fit.runs
    }


def before_after(frame: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(the base head's frame, the adapted frame) of an adapted-prediction frame (`base_logit` column)."""
    base = frame["base_logit"].to_numpy()
    return frame.with_columns(logit=pl.Series(base), prob=pl.Series(sigmoid(base))), frame


class _Predictor:
    """Adapted logits for any rows: the out-of-fold one where a fold held the row out, else the average."""

    def __init__(self, head: SavedHead, fit: CrossFit, adapt: Table):
        self.head, self.models = head, [run.model for run in fit.runs]
        held = np.flatnonzero(fit.fold_of >= 0)
        self.pinned = pl.DataFrame(
            {
                "image_id": [adapt.image_id[i] for i in held],
                "oof": fit.oof_logit[held],
                "oof_fold": fit.fold_of[held],
            }
        )

    def frame(self, table: Table, part: str) -> pl.DataFrame:
        """Member-prediction columns plus `fold` (the fold that held the row out; -1: fold average),
        `member` and `base_logit` (the head before adaptation, on the same row)."""
        joined = pl.DataFrame({"image_id": table.image_id}).join(
            self.pinned, on="image_id", how="left", maintain_order="left"
        )
        average = fold_average(self.models, table, self.head.config)
        base = predict_with_model(model=self.head.model, table=table, config=self.head.config)
        return table.predictions(part, joined["oof"].fill_null(pl.Series(average)).to_numpy()).with_columns(
            fold=pl.Series(joined["oof_fold"].fill_null(-1).to_numpy(), dtype=pl.Int64),
            member=pl.lit(self.head.name),
            base_logit=pl.Series(base.astype(np.float64)),
        )


def adapt_member(
    head: SavedHead,
    *,
    cache: FeatureCache,
    config: FinetuneConfig,
    paths: Paths,
    index: pl.DataFrame,
    threshold: float,
    n_boot: int,
) -> tuple[dict[str, Any], pl.DataFrame]:
    """Cross-fit one member, write its adapters and prediction frames; returns its metrics and the
    out-of-fold frame of its labelled adaptation rows. (No timings in the metrics: the stage's outputs
    are the same bytes on every run of the same inputs.)"""
    adapt_rows = index.filter(pl.col("split") == config.split)
    if adapt_rows.is_empty():
        raise ValueError(f"finetune.split={config.split!r}: the index has no rows of that split")
    text = Path(paths.text)
    adapt = head.table(adapt_rows, cache=cache, text_path=text)
    fit = cross_fit(base=head.model, table=adapt, config=config, member=head.config)
    out_dir = Path(paths.dora) / head.name
    shutil.rmtree(out_dir, ignore_errors=True)  # no stale fold<k> left from a run with more folds
    save_cross_fit(fit, adapt, out_dir)
    predictor = _Predictor(head, fit, adapt)
    pred_dir = Path(paths.dora_predictions) / head.name
    pred_dir.mkdir(parents=True, exist_ok=True)
    oof = predictor.frame(adapt, config.split)
    oof.write_parquet(pred_dir / "oof.parquet")
    held = oof.filter(pl.col("fold") >= 0)
    metrics: dict[str, Any] = {"oof": compare(*before_after(held), threshold, n_boot)}
    for part in PARTS:
        ids = read_predictions(Path(paths.predictions), head.name, part)["image_id"].to_list()
        rows = rows_for(index, ids, f"{paths.predictions}/{head.name}/{part}.parquet")
        written = predictor.frame(head.table(rows, cache=cache, text_path=text), part)
        written.write_parquet(pred_dir / f"{part}.parquet")
        others = written.filter(pl.col("fold") < 0)
        if len(others):  # rows no fold held out: the fold average, on rows DoRA never trained on
            metrics[f"{part}_fold_average"] = compare(*before_after(others), threshold, n_boot)
    report = adapter_report(predictor.models[0])
    idle = sorted({m for model in predictor.models for m in adapter_report(model)["idle_adapters"]})
    metrics |= {
        "trainable_params": report["trainable_params"],
        "base_params": report["base_params"],
        "trainable_share": report["trainable_share"],
        "adapted_modules": len(report["adapted_modules"]),
        "idle_adapters": ", ".join(idle),
        "folds": fold_summary(fit),
    }
    return metrics, held


def finetune_members(
    heads: list[SavedHead],
    *,
    cache: FeatureCache,
    config: FinetuneConfig,
    paths: Paths,
    index: pl.DataFrame,
    threshold: float,
    n_boot: int,
) -> dict[str, Any]:
    """Adapt every head in turn; returns the summary `finetune.json` holds (per member, and the adapted
    members averaged, before and after)."""
    summary: dict[str, Any] = {"split": config.split, "folds": config.folds, "lr": config.lr}
    summary |= {"epochs": config.epochs, "members": {}}
    held = []
    for head in heads:
        result, oof = adapt_member(
            head,
            cache=cache,
            config=config,
            paths=paths,
            index=index,
            threshold=threshold,
            n_boot=n_boot,
        )
        summary["members"][head.name] = result
        held.append(oof)
    if held:
        befores = [before_after(frame)[0] for frame in held]
        summary["overall"] = compare(average_logits(befores), average_logits(held), threshold, n_boot)
    return summary
