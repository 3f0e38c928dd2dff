"""Which members: ranked by validation MCC, submit's top k, and which of them are full heads.

`submit`, `finetune`, `tta` and `report` all take their members from here, so the rule is written once.
`finetune` and `tta` recompute submit's choice from the validation predictions instead of reading
`submission/ensemble.json`: `submit` consumes their outputs, so reading its choice back would be a cycle.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import polars as pl

from roadwork.ensemble import EnsembleConfig
from roadwork.ensemble.calibrate import best_cut
from roadwork.metrics import mcc
from roadwork.predictions import read_predictions
from roadwork.train.checkpoint import load_head


def rank_members(
    val: dict[str, pl.DataFrame], threshold: float | None, weight: np.ndarray | None = None
) -> list[tuple[str, float]]:
    """Members sorted by validation MCC, best first (ties by name, for determinism): at `threshold` on
    the probability, or (None) each at its own best cut, where its calibration would put 0.5;
    `weight`: per row of the frames (which share their rows' order), None: 1 each."""
    scores = {}
    for name, frame in val.items():
        label, logit = frame["label"].to_numpy(), frame["logit"].to_numpy()
        if threshold is None:
            said = logit > best_cut(logit, label, weight)
        else:
            said = frame["prob"].to_numpy() > threshold
        scores[name] = mcc(label, said.astype(int), weight)
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))


def validation_frames(pred_dir: Path, members: Iterable[str]) -> dict[str, pl.DataFrame]:
    """Each member's validation predictions."""
    return {m: read_predictions(Path(pred_dir), m, "val") for m in members}


def chosen_members(pred_dir: Path, ensemble: EnsembleConfig, threshold: float) -> list[str]:
    """submit's choice: the top_k members by validation MCC, best first."""
    ranking = rank_members(validation_frames(pred_dir, ensemble.members), threshold)
    return [name for name, _ in ranking[: ensemble.top_k]]


def members_or_chosen(
    configured: Iterable[str] | None, ensemble: EnsembleConfig, threshold: float, pred_dir: Path
) -> list[str]:
    """The configured members (a stage's `members:` param), or (None) submit's choice."""
    if configured is not None:
        return list(configured)
    return chosen_members(pred_dir, ensemble, threshold)


def full_heads(heads_dir: Path, names: Iterable[str]) -> tuple[list[str], dict[str, str]]:
    """The members among `names` (in order) trained as the full head, and why the others are not.

    Only full heads have the attention projections DoRA adapts, the embedding FOODS measures and the
    view gates the report shows."""
    keep, skipped = [], {}
    for name in names:
        head = load_head(Path(heads_dir) / name)
        if head.is_full_head:
            keep.append(name)
        else:
            skipped[name] = (
                f"model {head.spec['model']!r} is not a full head (no attention layers, no embedding)"
            )
    return keep, skipped
