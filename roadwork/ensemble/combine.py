"""Averaging member predictions, with refinements (DoRA out-of-fold logits, TTA) layered on top.

Every source is a *layer*: a dict member -> prediction frame (`roadwork.predictions`). For each chosen
member the frame of the *last* layer that has one wins, so a member without a refinement (the MLP has
no DoRA, no TTA) keeps its plain prediction, and the logits of the picked frames are averaged.
`variants` names the rows of the final table: best single / ensemble / +DoRA / +TTA / +DoRA+TTA.
"""

from __future__ import annotations

import polars as pl

from roadwork.predictions import average_logits

Layer = dict[str, pl.DataFrame]


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
