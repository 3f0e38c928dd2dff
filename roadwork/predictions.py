"""Prediction frames: what every trained or refined member writes and every consumer reads.

A frame has one row per image: `image_id`, `split`, `label` (null where unlabelled), `group` (video or
GPS cell, for grouped bootstraps), `logit` (roadwork log-odds) and `prob` (its sigmoid). Members write
`<dir>/<member>/<part>.parquet` (part: val | test, and val_image_only | test_image_only: the same rows
with every metadata input NULL, as images arrive as plain files); refinements (DoRA, TTA) write the
same layout under their own directory and may add columns.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl

from roadwork.metrics import sigmoid

PREDICTION_COLUMNS = ("image_id", "split", "label", "group", "logit", "prob")
IMAGE_ONLY = "image_only"  # `<part>_image_only`: a member's answers to the same rows without metadata


def predictions_frame(
    *, image_id: Sequence[str], split: str, label: np.ndarray, group: Sequence[str], logit: np.ndarray
) -> pl.DataFrame:
    """A prediction frame; `label` is int with -1 (or any negative) for unlabelled rows."""
    labels = pl.Series("label", np.asarray(label), dtype=pl.Int64)
    logit = np.asarray(logit, dtype=np.float64)
    return pl.DataFrame(
        {
            "image_id": list(image_id),
            "split": [split] * len(logit),
            "label": labels.set(labels < 0, None),
            "group": list(group),
            "logit": logit,
            "prob": sigmoid(logit),
        }
    )


def _checked(path: Path) -> pl.DataFrame:
    frame = pl.read_parquet(path)
    missing = [c for c in PREDICTION_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}")
    return frame


def read_predictions(pred_dir: Path, member: str, part: str) -> pl.DataFrame:
    """`<pred_dir>/<member>/<part>.parquet`, checked for the expected columns."""
    path = Path(pred_dir) / member / f"{part}.parquet"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no predictions for member {member!r}; run `dvc repro train@{member}`"
        )
    return _checked(path)


def read_layer(pred_dir: Path, members: Sequence[str], part: str) -> dict[str, pl.DataFrame]:
    """`<pred_dir>/<member>/<part>.parquet` of the members that have one (refinements are optional)."""
    paths = {m: Path(pred_dir) / m / f"{part}.parquet" for m in members}
    return {m: _checked(path) for m, path in paths.items() if path.is_file()}


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
    return base.with_columns(logit=pl.Series(mean), prob=pl.Series(sigmoid(mean)))
