"""The report's tables: pure functions on polars frames (ensemble predictions joined to the index).

Conventions as in `roadwork.report.metrics`: `label` is 0/1 (1 = roadwork), `prob` the roadwork
probability, and a row is predicted roadwork when `prob > threshold`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from roadwork.predictions import average_logits, read_predictions

NULL = "NULL"  # a missing tag or metadata value, as its own slice
NO_GPS = "no GPS"
# Slice name -> column of `scored_frame`'s output.
SLICES = {
    "weather": "weather_tag",
    "daytime": "daytime",
    "scene_environment": "scene_environment",
    "city": "city",
    "GPS cluster": "gps_cluster",
}
SLICE_COLUMNS = ("value", "n", "positives", "predicted", "tp", "fp", "fn", "tn", "accuracy", "mcc")


def read_final(path: Path) -> dict[str, Any]:
    """`scores.json` written by `submit` (every variant, with intervals); checks the keys the report reads."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no scores (run the submit stage)")
    final = json.loads(path.read_text())
    missing = [k for k in ("members", "chosen", "use", "val", "test", "variants") if k not in final]
    if missing:
        raise ValueError(f"{path}: missing key(s) {missing}")
    if not final["chosen"]:
        raise ValueError(f"{path}: field 'chosen' lists no member")
    return final


def ensemble_predictions(pred_dir: Path, members: list[str], part: str) -> pl.DataFrame:
    """The chosen members' averaged logits on `part` (val | test), exactly as `submit` computes them."""
    return average_logits([read_predictions(Path(pred_dir), m, part) for m in members])


def scored_frame(predictions: pl.DataFrame, index: pl.DataFrame, gps_weights: pl.DataFrame) -> pl.DataFrame:
    """Labelled predictions joined to their index metadata and GPS cluster, one row per image.

    Adds `weather_tag` (first weather tag or NULL), NULL for missing daytime / scene / city, and
    `gps_cluster` ("cluster k" or "no GPS"). Every prediction must have an index row.
    """
    meta = index.select(
        "image_id",
        "shard",
        "row",
        "width",
        "height",
        "lat",
        "lon",
        "city",
        "daytime",
        "scene_environment",
        "weather",
        "scene_description",
    )
    joined = predictions.filter(pl.col("label").is_not_null()).join(meta, on="image_id", how="left")
    lost = joined.filter(pl.col("shard").is_null())
    if len(lost):
        raise ValueError(
            f"predictions: image_id {lost['image_id'][0]!r} is not in the index ({len(lost)} such rows); "
            "the predictions are stale, re-run the train stages"
        )
    clusters = gps_weights.select("image_id", "cluster")
    joined = joined.join(clusters, on="image_id", how="left", maintain_order="left")
    return joined.with_columns(
        weather_tag=pl.col("weather").list.first().fill_null(NULL),
        daytime=pl.col("daytime").fill_null(NULL),
        scene_environment=pl.col("scene_environment").fill_null(NULL),
        city=pl.col("city").fill_null(NULL),
        gps_cluster=pl.when(pl.col("cluster").is_null())
        .then(pl.lit(NO_GPS))
        .otherwise(pl.lit("cluster ") + pl.col("cluster").cast(pl.String)),
    ).sort("image_id")


def gps_points(index: pl.DataFrame, gps_weights: pl.DataFrame) -> pl.DataFrame:
    """split, lat, lon, cluster of every index row with GPS (the map's points), sorted by image_id."""
    located = index.select("image_id", "split", "lat", "lon").drop_nulls(["lat", "lon"])
    located = located.filter(pl.col("lat").is_not_nan() & pl.col("lon").is_not_nan())
    return located.join(gps_weights.select("image_id", "cluster"), on="image_id", how="left").sort("image_id")


def _mcc_or_none(tp: int, fp: int, fn: int, tn: int) -> float | None:
    """MCC, or None where it is undefined (one class in the labels or in the predictions)."""
    den = (tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)
    return (tp * tn - fp * fn) / float(np.sqrt(den)) if den > 0 else None


def confusion(frame: pl.DataFrame, threshold: float) -> dict[str, int]:
    """tp, fp, fn, tn of `frame` (label, prob) at `threshold`."""
    y = frame["label"].to_numpy().astype(int)
    pred = frame["prob"].to_numpy() > threshold
    return {
        "tp": int(np.sum((y == 1) & pred)),
        "fp": int(np.sum((y == 0) & pred)),
        "fn": int(np.sum((y == 1) & ~pred)),
        "tn": int(np.sum((y == 0) & ~pred)),
    }


def slice_metrics(frame: pl.DataFrame, column: str, threshold: float) -> pl.DataFrame:
    """Per value of `column`: n, positives, predicted positives, confusion counts, accuracy, MCC.

    MCC is null where undefined (one class only among the slice's labels or predictions): a slice of
    only roadwork images cannot show a correlation. Largest slices first, ties by value.
    """
    rows = []
    for (value,), part in frame.group_by(column, maintain_order=True):
        c = confusion(part, threshold)
        n = len(part)
        rows.append(
            {
                "value": str(value),
                "n": n,
                "positives": c["tp"] + c["fn"],
                "predicted": c["tp"] + c["fp"],
                **c,
                "accuracy": (c["tp"] + c["tn"]) / n,
                "mcc": _mcc_or_none(c["tp"], c["fp"], c["fn"], c["tn"]),
            }
        )
    schema = {name: pl.Int64 for name in SLICE_COLUMNS} | {
        "value": pl.String,
        "accuracy": pl.Float64,
        "mcc": pl.Float64,
    }
    out = pl.DataFrame(rows, schema=schema) if rows else pl.DataFrame(schema=schema)
    return out.sort(["n", "value"], descending=[True, False])


def all_slices(frame: pl.DataFrame, threshold: float) -> dict[str, pl.DataFrame]:
    """`slice_metrics` for every slice of SLICES."""
    return {name: slice_metrics(frame, column, threshold) for name, column in SLICES.items()}


def reliability(frame: pl.DataFrame, bins: int) -> pl.DataFrame:
    """Equal-width bins of prob on [0, 1]: lo, hi, n, mean_prob, positive_rate (null where empty)."""
    if bins < 1:
        raise ValueError(f"reliability: bins must be >= 1, got {bins}")
    p = frame["prob"].to_numpy().astype(float)
    y = frame["label"].to_numpy().astype(float)
    idx = np.minimum((p * bins).astype(np.int64), bins - 1)  # p = 1 falls in the last bin
    n = np.bincount(idx, minlength=bins)
    sum_p = np.bincount(idx, weights=p, minlength=bins)
    sum_y = np.bincount(idx, weights=y, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p, rate = sum_p / n, sum_y / n
    edges = np.linspace(0.0, 1.0, bins + 1)
    return pl.DataFrame(
        {
            "lo": edges[:-1],
            "hi": edges[1:],
            "n": n.astype(np.int64),
            "mean_prob": np.where(n > 0, mean_p, np.nan),
            "positive_rate": np.where(n > 0, rate, np.nan),
        }
    ).with_columns(pl.col("mean_prob", "positive_rate").fill_nan(None))


def worst_errors(frame: pl.DataFrame, threshold: float, k: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The k most confident false positives and false negatives (largest |prob - label|).

    Ties are broken by image_id, so the gallery is the same for the same predictions.
    """
    err = frame.with_columns(error=(pl.col("prob") - pl.col("label")).abs())
    order = {"by": ["error", "image_id"], "descending": [True, False]}
    fp = err.filter((pl.col("label") == 0) & (pl.col("prob") > threshold)).sort(**order).head(k)
    fn = err.filter((pl.col("label") == 1) & (pl.col("prob") <= threshold)).sort(**order).head(k)
    return fp, fn


def read_curves(member_dir: Path) -> dict[str, pl.DataFrame]:
    """A member's dvclive step metrics: `plots/metrics/**/<name>.tsv` -> {"val/mcc": frame(step, value)}.

    The metric name is the file's path under `plots/metrics` without `.tsv`; its column in the file
    is the last part of that name (dvclive's layout). Empty when the member logged nothing.
    """
    root = Path(member_dir) / "plots" / "metrics"
    curves = {}
    for path in sorted(root.rglob("*.tsv")):
        name = path.relative_to(root).with_suffix("").as_posix()
        frame = pl.read_csv(path, separator="\t")
        column = name.rsplit("/", 1)[-1]
        missing = [c for c in ("step", column) if c not in frame.columns]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; found {frame.columns}")
        curves[name] = frame.select(
            pl.col("step").cast(pl.Int64), pl.col(column).cast(pl.Float64).alias("value")
        )
    return curves


def markdown_tables(text: str) -> list[list[list[str]]]:
    """Tables of a markdown text: runs of lines starting with '|', split into cells.

    Separator rows (`|---|:--:|`) are dropped; the first row of each table is its header.
    """
    tables: list[list[list[str]]] = []
    current: list[list[str]] = []
    for line in [*text.splitlines(), ""]:
        stripped = line.strip()
        if stripped.startswith("|"):
            cells = [c.strip() for c in stripped.strip("|").split("|")]
            if not all(c and set(c) <= set(":-") for c in cells):
                current.append(cells)
        elif current:
            tables.append(current)
            current = []
    return tables
