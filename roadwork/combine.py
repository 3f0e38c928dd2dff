"""Combining refined member predictions: DoRA out-of-fold logits and TTA on top of the plain members.

Every source is a dict member -> prediction frame (the member parquet columns: image_id, split, label,
group, logit, prob). Sources are layered: for each chosen member the frame of the *last* layer that has
one wins, so a member without a refinement (the MLP has no DoRA, no TTA) keeps its plain prediction, and
the logits of the picked frames are averaged as `submit` averages plain members.

`variants` names the rows of the final table (best single / ensemble / +DoRA / +TTA / +DoRA+TTA) and
`compare` is the before/after summary both refinement stages report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from roadwork.ensemble import PREDICTION_COLUMNS, average_logits
from roadwork.report.metrics import metrics_with_ci

Layer = dict[str, pl.DataFrame]


def read_layer(pred_dir: Path, members: list[str], part: str) -> Layer:
    """`<pred_dir>/<member>/<part>.parquet` of the members that have one (refinements are optional)."""
    out = {}
    for member in members:
        path = Path(pred_dir) / member / f"{part}.parquet"
        if path.is_file():
            frame = pl.read_parquet(path)
            missing = [c for c in PREDICTION_COLUMNS if c not in frame.columns]
            if missing:
                raise ValueError(f"{path}: missing column(s) {missing}")
            out[member] = frame
    return out


def pick_frames(members: list[str], *layers: Layer) -> list[pl.DataFrame]:
    """Per member, the frame of the last layer holding it; the first layer must hold every member."""
    if not layers:
        raise ValueError("pick_frames: no layers given")
    missing = [m for m in members if m not in layers[0]]
    if missing:
        raise ValueError(f"pick_frames: the base layer lacks member(s) {missing}")
    return [next(layer[m] for layer in reversed(layers) if m in layer) for m in members]


def combine(members: list[str], *layers: Layer) -> pl.DataFrame:
    """Mean logit over `members`, each member's frame taken from its most refined layer."""
    return average_logits(pick_frames(members, *layers))


def variants(
    members: list[str],
    base: Layer,
    dora: Layer | None = None,
    tta: Layer | None = None,
    tta_dora: Layer | None = None,
) -> dict[str, pl.DataFrame]:
    """The comparison rows of `submit`: best single member (`members[0]`), the plain ensemble, and the
    ensemble with DoRA, with TTA (plain heads), and with both (TTA through the DoRA fold models)."""
    dora, tta, tta_dora = dora or {}, tta or {}, tta_dora or {}
    return {
        "best_single": combine(members[:1], base),
        "ensemble": combine(members, base),
        "ensemble+dora": combine(members, base, dora),
        "ensemble+tta": combine(members, base, tta),
        "ensemble+dora+tta": combine(members, base, dora, tta, tta_dora),
    }


def score(frame: pl.DataFrame, threshold: float, n: int) -> dict[str, Any] | None:
    """Metrics with 95 % group-bootstrap intervals on the labelled rows (None when there are none)."""
    labelled = frame.filter(pl.col("label").is_not_null())
    if labelled.is_empty():
        return None
    return metrics_with_ci(
        labelled["label"].to_numpy(),
        labelled["prob"].to_numpy(),
        threshold=threshold,
        n=n,
        seed=0,
        groups=labelled["group"].to_numpy(),
    )


def compare(before: pl.DataFrame, after: pl.DataFrame, threshold: float, n: int) -> dict[str, Any]:
    """Before/after on the same rows: both scores, ΔMCC, mean / max |Δlogit| and changed decisions.

    Written so that a refinement that changes nothing measurable says so in plain numbers.
    """
    joined = before.select("image_id", "label", "group", "logit", "prob").join(
        after.select("image_id", logit_after="logit", prob_after="prob"), on="image_id", how="inner"
    )
    if len(joined) != len(before) or len(joined) != len(after):
        raise ValueError(
            f"compare: frames hold different rows ({len(before)} before, {len(after)} after, "
            f"{len(joined)} shared)"
        )
    delta = np.abs(joined["logit_after"].to_numpy() - joined["logit"].to_numpy())
    changed = (joined["prob"].to_numpy() > threshold) != (joined["prob_after"].to_numpy() > threshold)
    out: dict[str, Any] = {
        "rows": len(joined),
        "mean_abs_delta_logit": float(delta.mean()) if len(delta) else 0.0,
        "max_abs_delta_logit": float(delta.max()) if len(delta) else 0.0,
        "decisions_changed": int(changed.sum()),
        "before": score(joined, threshold, n),
        "after": score(
            joined.select("image_id", "label", "group", logit="logit_after", prob="prob_after"), threshold, n
        ),
    }
    if out["before"] is not None:
        out["delta_mcc"] = out["after"]["mcc"] - out["before"]["mcc"]
    return out
