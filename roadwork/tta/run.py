"""FOODS end to end (`run_tta`): the TTA cache filled for the wanted images, members scored augmentation
by augmentation, prediction frames, weights and before / after metrics written (see `stages/tta.py`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from roadwork.config import Paths
from roadwork.data.index import rows_for
from roadwork.device import resolve_device
from roadwork.distributed import SINGLE, Ranks, rank_device, rank_zero_first, total
from roadwork.features.backbone import load_backbone
from roadwork.features.cache import ExtractConfig, FeatureCache, open_features
from roadwork.features.extract import once_per_view, view_embedder
from roadwork.features.manifest import read_manifest
from roadwork.metrics import compare
from roadwork.predictions import read_predictions
from roadwork.train.checkpoint import SavedHead, load_head
from roadwork.train.dora import load_fold_models
from roadwork.tta import TtaConfig
from roadwork.tta.augment import AugSpec
from roadwork.tta.extract import (
    TtaCache,
    copy_clean_views,
    extract_tta,
    open_for_writing,
    read_tokens,
    tta_attrs,
)
from roadwork.tta.heads import MemberTTA, Variant, fold_assignment, training_rows
from roadwork.views.plan import ViewsConfig, n_views, read_plan, rule_fingerprint


def ensure_features(
    *,
    paths: Paths,
    tta: TtaConfig,
    extract: ExtractConfig,
    views: ViewsConfig,
    dtype: str,
    plan_meta: dict[str, Any],
    jobs: pl.DataFrame,
    features: FeatureCache,
    ranks: Ranks = SINGLE,
) -> tuple[dict[AugSpec, TtaCache], dict[str, Any]]:
    """Fill the TTA cache for the images of `jobs` (this rank's shards, then wait for the other ranks):
    the identity augmentation from `features` (the clean views `extract` embedded), the others through
    the backbone, loaded only if something is missing."""
    if rule_fingerprint(views) != plan_meta["rule_fingerprint"]:
        raise ValueError(f"params.yaml views: {views} is not the rule of {paths.views}; re-run `views`")
    manifest = read_manifest(Path(paths.backbone), "backbone")

    def open_and_append() -> dict[AugSpec, TtaCache]:
        caches = open_for_writing(
            Path(paths.tta),
            tta.augmentations,
            attrs=tta_attrs(extract, backbone=manifest, plan_meta=plan_meta),
            views=n_views(views),
            dim=manifest["hidden_size"],
            chunk_rows=tta.chunk_rows,
            shard_rows=tta.shard_rows,
        )
        ids = jobs["image_id"].to_list()
        for spec, cache in caches.items():
            cache.ensure_rows(ids)
            if spec == AugSpec():
                copy_clean_views(cache, features, ids)
        return caches

    caches = rank_zero_first(open_and_append, ranks)
    embedder = None
    device = rank_device(resolve_device(tta.device), ranks)

    def embed(batch: np.ndarray) -> np.ndarray:
        nonlocal embedder
        if embedder is None:  # only when something is missing
            embedder = once_per_view(
                view_embedder(load_backbone(Path(paths.backbone), dtype, device), extract, tta.batch_views)
            )
        return embedder(batch).cpu().numpy()

    counts = extract_tta(
        caches=caches,
        jobs=jobs,
        raw_root=Path(paths.raw),
        views=views,
        side=extract.side,
        embed=embed,
        batch_views=tta.batch_views,
        workers=tta.workers,
        ranks=ranks,
    )
    for key in ("images", "views"):  # every rank's shards are written before anyone reads them
        counts[key] = int(total(counts[key], ranks, device))
    return caches, counts


def member_tta(
    head: SavedHead, part: str, *, cache: FeatureCache, paths: Paths, tta: TtaConfig, index: pl.DataFrame
) -> MemberTTA:
    """A member's FOODS accumulator for one part: its head, plus its DoRA fold models when adapted."""
    ids = read_predictions(Path(paths.predictions), head.name, part)["image_id"].to_list()
    text = Path(paths.text)
    rows = rows_for(index, ids, f"{paths.predictions}/{head.name}/{part}.parquet")
    table = head.table(rows, cache=cache, text_path=text)
    variants = [Variant("plain", [head.model], np.zeros(len(ids), np.int64))]
    oof = Path(paths.dora_predictions) / head.name / "oof.parquet"
    if oof.is_file():
        device = next(head.model.parameters()).device
        folds = load_fold_models(Path(paths.heads) / head.name, Path(paths.dora) / head.name, device)
        variants.append(Variant("dora", folds, fold_assignment(ids, pl.read_parquet(oof))))
    train = head.table(training_rows(index, head.config), cache=cache, text_path=text)
    return MemberTTA(head.name, config=head.config, rows=table, train=train, variants=variants, tta=tta)


def score(members: list[MemberTTA], caches: dict[AugSpec, TtaCache], specs: tuple[AugSpec, ...]) -> None:
    """Feed every augmentation's cached tokens to every member, reading each augmentation once."""
    ids = list(dict.fromkeys(i for m in members for i in m.rows.image_id))
    position = {image_id: k for k, image_id in enumerate(ids)}
    for spec in specs:
        tokens = read_tokens(caches[spec], ids)
        for m in members:
            m.add(tokens[[position[i] for i in m.rows.image_id]])


def write_member(
    m: MemberTTA, part: str, *, paths: Paths, tta: TtaConfig, threshold: float, n_boot: int
) -> dict[str, Any]:
    """Write a member's TTA frames and weights; returns before / after metrics per variant."""
    out: dict[str, Any] = {}
    keys = [s.key() for s in tta.augmentations]
    plain = read_predictions(Path(paths.predictions), m.name, part)
    for variant, (frame, weights) in m.frames(part).items():
        folder = Path(paths.tta_predictions) / variant / m.name
        folder.mkdir(parents=True, exist_ok=True)
        frame.write_parquet(folder / f"{part}.parquet")
        per_aug = dict(zip(keys, weights.T, strict=True))
        pl.DataFrame({"image_id": frame["image_id"], **per_aug}).write_parquet(
            folder / f"{part}_weights.parquet"
        )
        if variant == "plain":
            before = plain
        else:
            before = pl.read_parquet(Path(paths.dora_predictions) / m.name / f"{part}.parquet")
        out[variant] = compare(before, frame, threshold, n_boot)
        out[variant]["augmentations"] = {
            f"aug{k:02d}": {"mean_weight": float(w.mean()), "kept_share": float((w > 0).mean())}
            for k, w in enumerate(weights.T)
        }
    if AugSpec() in tta.augmentations:  # the identity must reproduce the plain prediction (a cache check)
        identity = m.variants[0].logits[tta.augmentations.index(AugSpec())]
        stored = pl.DataFrame({"image_id": m.rows.image_id}).join(
            plain.select("image_id", "logit"), on="image_id", how="left", maintain_order="left"
        )
        out["identity_max_abs_delta_logit"] = float(np.abs(identity - stored["logit"].to_numpy()).max())
    return out


def run_tta(
    heads: list[str],
    *,
    paths: Paths,
    tta: TtaConfig,
    extract: ExtractConfig,
    views: ViewsConfig,
    dtype: str,
    index: pl.DataFrame,
    threshold: float,
    n_boot: int,
    ranks: Ranks = SINGLE,
) -> tuple[int, dict[str, Any] | None]:
    """FOODS for the full-head members `heads`: the backbone passes this rank owns, then (rank 0 only)
    every member scored and written. Returns the views computed (all ranks) and, on rank 0, the summary
    `tta.json` holds (None elsewhere)."""
    _, plan_meta = read_plan(Path(paths.views))
    frames = [read_predictions(Path(paths.predictions), n, p) for n in heads for p in tta.parts]
    ids = list(dict.fromkeys(i for frame in frames for i in frame["image_id"].to_list()))
    cache = open_features(paths, extract)
    caches, counts = ensure_features(
        paths=paths,
        tta=tta,
        extract=extract,
        views=views,
        dtype=dtype,
        plan_meta=plan_meta,
        jobs=rows_for(index, ids, "tta"),
        features=cache,
        ranks=ranks,
    )
    if ranks.rank != 0:  # the backbone passes are split; FOODS scoring is cheap and done by rank 0
        return counts["views"], None
    device = resolve_device(tta.device)
    summary: dict[str, Any] = {
        "augmentations": {f"aug{k:02d}": s.key() for k, s in enumerate(tta.augmentations)},
        "distance": tta.distance,
        "keep": tta.keep,
        "temperature": tta.temperature,
        "parts": {},
    }
    for part in tta.parts:
        members = [
            member_tta(
                load_head(Path(paths.heads) / n, device), part, cache=cache, paths=paths, tta=tta, index=index
            )
            for n in heads
        ]
        score(members, caches, tta.augmentations)
        summary["parts"][part] = {
            m.name: write_member(m, part, paths=paths, tta=tta, threshold=threshold, n_boot=n_boot)
            for m in members
        }
    return counts["views"], summary


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The stage's log: MCC before and after FOODS, per part, member and variant."""
    lines = []
    for part, members in summary["parts"].items():
        for name, result in members.items():
            for variant in ("plain", "dora"):
                if variant in result and result[variant]["before"] is not None:
                    before, after = result[variant]["before"]["mcc"], result[variant]["after"]["mcc"]
                    lines.append(f"tta@{name}/{variant} {part}: MCC {before:.3f} -> {after:.3f}")
    return lines
