"""Stage `report`: the self-contained error-analysis page `<paths.reports>/index.html`.

Reads the final metrics, the chosen members' test predictions, the index, GPS clusters, view plan,
training logs and raw images; recomputes view gates with one chosen full-head member on the cached
features of the gallery's images; adds SAM 3 masks and the ablation table where they exist.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from roadwork.config import Paths, load_params, load_paths, save_resolved, section
from roadwork.data.gps import read_clusters, read_weights
from roadwork.data.images import ShardReader
from roadwork.data.index import read_index
from roadwork.features.backbone import read_manifest
from roadwork.features.cache import ExtractConfig, FeatureCache, expected_attrs
from roadwork.report import analysis
from roadwork.report.gallery import (
    GalleryItem,
    GateSource,
    build_gallery,
    first_full_head,
    gates_by_image,
    masks_if_present,
)
from roadwork.report.html import ReportConfig, ReportData, render_report
from roadwork.views.plan import boxes_by_image, read_plan


def gallery(
    params: dict[str, Any],
    paths: Paths,
    config: ReportConfig,
    *,
    test: pl.DataFrame,
    index: pl.DataFrame,
    views: tuple[pl.DataFrame, dict[str, Any]],
    chosen: list[str],
) -> tuple[list[GalleryItem], list[str]]:
    """The worst errors with thumbnails, view gates (a chosen full head) and masks (if cached); notes."""
    plan, plan_meta = views  # read_plan(paths.views)
    fp, fn = analysis.worst_errors(test, float(params["submit"]["threshold"]), config.gallery)
    worst_ids = [*fp["image_id"], *fn["image_id"]]
    notes, gates = [], None
    member = first_full_head(Path(paths.heads), chosen)
    if member is None:
        notes.append("No chosen member is a full head: no view gates to show.")
    else:
        extract = section(ExtractConfig, params, "extract")
        expected = expected_attrs(extract, backbone=read_manifest(Path(paths.backbone)), plan_meta=plan_meta)
        cache = FeatureCache.open_checked(Path(paths.features), expected)
        source = GateSource(member, Path(paths.heads) / member, cache, Path(paths.text))
        rows = index.filter(pl.col("image_id").is_in(worst_ids))
        gates = gates_by_image(source, rows, plan_meta["n_views"])
        notes.append(
            f"View gates: GAFM pooling weights of member {member}, in % on the views it kept "
            "(pruned views have none)."
        )
    masks, masks_note = masks_if_present(paths.masks, worst_ids, plan_meta["rule_fingerprint"])
    items = build_gallery(
        {"false positive": fp, "false negative": fn},
        reader=ShardReader(Path(paths.raw)),
        boxes=boxes_by_image(plan.filter(pl.col("image_id").is_in(worst_ids))),
        width=config.thumb_width,
        gates=gates,
        masks=masks,
    )
    return items, [*notes, masks_note]


def main() -> None:
    params = load_params()
    paths = load_paths(params)
    config = section(ReportConfig, params, "report")
    threshold = float(params["submit"]["threshold"])
    final = analysis.read_final(Path(paths.metrics) / "final.json")
    index = read_index(Path(paths.prepared))
    weights = read_weights(Path(paths.gps))
    predictions = analysis.ensemble_predictions(Path(paths.predictions), final["chosen"], "test")
    test = analysis.scored_frame(predictions, index, weights)
    plan = read_plan(Path(paths.views))
    items, notes = gallery(params, paths, config, test=test, index=index, views=plan, chosen=final["chosen"])
    live, members = Path(paths.live), list(final["members"])
    ablations = Path(config.ablations)
    data = ReportData(
        final=final,
        test=test,
        threshold=threshold,
        bins=config.bins,
        points=analysis.gps_points(index, weights),
        clusters=read_clusters(Path(paths.gps)),
        curves={m: analysis.read_curves(live / m) for m in members if (live / m).is_dir()},
        missing_curves=[m for m in members if not (live / m).is_dir()],
        gallery=items,
        view_names=plan[1]["names"],
        gallery_notes=notes,
        ablations=analysis.markdown_tables(ablations.read_text()) if ablations.is_file() else None,
        ablations_source=str(ablations),
    )
    out = Path(paths.reports)
    out.mkdir(parents=True, exist_ok=True)
    page = render_report(data)
    (out / "index.html").write_text(page, encoding="utf-8")
    save_resolved(config, out / "report_config.json")
    size = len(page.encode()) / 1024
    print(f"report: {len(test)} test images, {len(items)} failures -> {out / 'index.html'} ({size:.0f} KB)")


if __name__ == "__main__":
    main()
