"""One trained member, end to end through DoRA: its inputs, the K-fold cross-fit, the written adapters and
prediction frames, and the before / after summary. Also the member loading that `tta` shares.

Outputs per member (see `stages/finetune.py`): `<dora>/<member>/fold<k>/`, `folds.parquet`;
`<dora_predictions>/<member>/oof.parquet` (every adaptation-split row) and `val.parquet` / `test.parquet`
(the rows of the member's own prediction files: out of fold where a fold held the row out, else the fold
average); the metrics dict the stage collects into `finetune.json`.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from torch import nn

from roadwork.combine import compare
from roadwork.config import Paths
from roadwork.device import resolve_device
from roadwork.ensemble import read_predictions
from roadwork.features.cache import FeatureCache
from roadwork.features.text import read_text
from roadwork.train.checkpoint import load_head
from roadwork.train.config import TrainConfig
from roadwork.train.data import Table, Vocab, load_table
from roadwork.train.dora import (
    CrossFit,
    FinetuneConfig,
    adapted_frame,
    adapter_report,
    cross_fit,
    fold_average,
    head_recipe,
    save_cross_fit,
)
from roadwork.train.loop import predict_with_model

PARTS = ("val", "test")  # the member prediction files that get an adapted counterpart


def rows_for(index: pl.DataFrame, image_ids: list[str], where: str) -> pl.DataFrame:
    """Index rows for `image_ids`, in that order; every id must be in the index."""
    rows = pl.DataFrame({"image_id": image_ids}).join(index, on="image_id", how="left", maintain_order="left")
    if rows["split"].null_count():
        missing = rows.filter(pl.col("split").is_null())["image_id"][0]
        raise ValueError(f"{where}: image {missing!r} is not in the index; re-run the train stages")
    return rows


@dataclass
class MemberData:
    """A trained member's head, recipe and vocabulary, and how to turn index rows into its Table."""

    name: str
    model: nn.Module
    config: TrainConfig
    vocab: Vocab
    cache: FeatureCache
    text_path: Path

    @classmethod
    def load(cls, name: str, *, params: dict, paths: Paths, cache: FeatureCache, device: str) -> MemberData:
        model, _, vocab, saved = load_head(Path(paths.heads) / name, resolve_device(device))
        return cls(name, model, head_recipe(params, name, saved), vocab, cache, Path(paths.text))

    def table(self, rows: pl.DataFrame) -> Table:
        text = read_text(self.text_path, rows["image_id"].to_list())
        return load_table(rows, cache=self.cache, text=text, vocab=self.vocab, config=self.config)


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
    before = frame.with_columns(logit=pl.col("base_logit"), prob=1.0 / (1.0 + (-pl.col("base_logit")).exp()))
    return before, frame


class _Predictor:
    """Adapted logits for any rows: the out-of-fold one where a fold held the row out, else the average."""

    def __init__(self, member: MemberData, fit: CrossFit, adapt: Table):
        self.member, self.models = member, [run.model for run in fit.runs]
        held = np.flatnonzero(fit.fold_of >= 0)
        self.pinned = pl.DataFrame(
            {
                "image_id": [adapt.image_id[i] for i in held],
                "oof": fit.oof_logit[held],
                "oof_fold": fit.fold_of[held],
            }
        )

    def frame(self, table: Table, part: str) -> pl.DataFrame:
        joined = pl.DataFrame({"image_id": table.image_id}).join(
            self.pinned, on="image_id", how="left", maintain_order="left"
        )
        average = fold_average(self.models, table, self.member.config)
        return adapted_frame(
            table,
            part,
            logit=joined["oof"].fill_null(pl.Series(average)).to_numpy(),
            base_logit=predict_with_model(model=self.member.model, table=table, config=self.member.config),
            fold=joined["oof_fold"].fill_null(-1).to_numpy(),
            member=self.member.name,
        )


def adapt_member(
    member: MemberData,
    *,
    config: FinetuneConfig,
    paths: Paths,
    index: pl.DataFrame,
    threshold: float,
    n_boot: int,
) -> tuple[dict[str, Any], pl.DataFrame]:
    """Cross-fit one member, write its adapters and prediction frames; returns its metrics and the
    out-of-fold frame of its labelled adaptation rows."""
    started = time.perf_counter()
    adapt_rows = index.filter(pl.col("split") == config.split)
    if adapt_rows.is_empty():
        raise ValueError(f"finetune.split={config.split!r}: the index has no rows of that split")
    adapt = member.table(adapt_rows)
    fit = cross_fit(base=member.model, table=adapt, config=config, member=member.config)
    out_dir = Path(paths.dora) / member.name
    shutil.rmtree(out_dir, ignore_errors=True)  # no stale fold<k> left from a run with more folds
    save_cross_fit(fit, adapt, out_dir)
    predictor = _Predictor(member, fit, adapt)
    pred_dir = Path(paths.dora_predictions) / member.name
    pred_dir.mkdir(parents=True, exist_ok=True)
    oof = predictor.frame(adapt, config.split)
    oof.write_parquet(pred_dir / "oof.parquet")
    held = oof.filter(pl.col("fold") >= 0)
    metrics: dict[str, Any] = {"oof": compare(*before_after(held), threshold, n_boot)}
    for part in PARTS:
        ids = read_predictions(Path(paths.predictions), member.name, part)["image_id"].to_list()
        rows = rows_for(index, ids, f"{paths.predictions}/{member.name}/{part}.parquet")
        written = predictor.frame(member.table(rows), part)
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
        "seconds": round(time.perf_counter() - started, 2),
    }
    return metrics, held
