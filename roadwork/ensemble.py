"""Combining ensemble members: rank by validation MCC, average the logits of the best k."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from roadwork.report.metrics import mcc

PREDICTION_COLUMNS = ("image_id", "split", "label", "group", "logit", "prob")
CHOICE_FILE = "ensemble.json"  # written by `submit` (members served, variant, threshold), read by `predict`


def read_predictions(pred_dir: Path, member: str, part: str) -> pl.DataFrame:
    """`<pred_dir>/<member>/<part>.parquet` (part: val | test), checked for the expected columns."""
    path = Path(pred_dir) / member / f"{part}.parquet"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no predictions for member {member!r}; run `dvc repro train@{member}`"
        )
    frame = pl.read_parquet(path)
    missing = [c for c in PREDICTION_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}")
    return frame


def rank_members(val: dict[str, pl.DataFrame], threshold: float) -> list[tuple[str, float]]:
    """Members sorted by validation MCC, best first (ties by name, for determinism)."""
    scores = {
        name: mcc(frame["label"].to_numpy(), (frame["prob"].to_numpy() > threshold).astype(int))
        for name, frame in val.items()
    }
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))


def average_logits(frames: list[pl.DataFrame]) -> pl.DataFrame:
    """Mean logit per image over members (all members must predict the same rows, in any order)."""
    if not frames:
        raise ValueError("no member predictions to average")
    base = frames[0].select("image_id", "split", "label", "group").sort("image_id")
    logits = []
    for frame in frames:
        aligned = base.select("image_id").join(frame, on="image_id", how="left", maintain_order="left")
        if aligned["logit"].null_count():
            raise ValueError("members predicted different rows; re-run the train stages")
        logits.append(aligned["logit"].to_numpy())
    mean = np.mean(logits, axis=0)
    return base.with_columns(logit=pl.Series(mean), prob=pl.Series(1.0 / (1.0 + np.exp(-mean))))
