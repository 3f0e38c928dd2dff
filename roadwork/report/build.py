"""The report's data, read from the pipeline's outputs, and the page rendered from it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl

from roadwork.config import Paths
from roadwork.data.gps import read_clusters, read_weights
from roadwork.data.index import read_index
from roadwork.ensemble.submit import SCORES_FILE
from roadwork.features.cache import ExtractConfig
from roadwork.report import analysis
from roadwork.report.figures import data_uri
from roadwork.report.gallery import failure_gallery
from roadwork.report.html import ReportConfig, ReportData, render_report
from roadwork.views.plan import read_plan


def report_data(
    *, paths: Paths, config: ReportConfig, extract: ExtractConfig, threshold: float
) -> ReportData:
    """Final metrics, the chosen ensemble's scored test predictions, GPS points and clusters, training
    curves, the failure gallery and the ablation table (when its document exists)."""
    final = analysis.read_final(Path(paths.submission) / SCORES_FILE)
    index, weights = read_index(Path(paths.prepared)), read_weights(Path(paths.gps))
    predictions = analysis.ensemble_predictions(Path(paths.predictions), final["chosen"], "test")
    test = analysis.scored_frame(predictions, index, weights)
    plan = read_plan(Path(paths.views))
    items, notes = failure_gallery(
        test,
        paths=paths,
        extract=extract,
        index=index,
        views=plan,
        chosen=final["chosen"],
        threshold=threshold,
        count=config.gallery,
        width=config.thumb_width,
    )
    live, members, ablations = Path(paths.live), list(final["members"]), Path(config.ablations)
    details = Path(paths.validation) / "details.json"
    return ReportData(
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
        validator=json.loads(details.read_text()) if details.is_file() else None,
        validator_worst=worst_challenges(Path(paths.validation), Path(paths.challenge), config.gallery),
    )


def worst_challenges(validation: Path, challenge_dir: Path, count: int) -> list[dict[str, Any]]:
    """The `count` most confidently wrong test challenges, each with its JPEG as a data URI."""
    answers = validation / "answers.parquet"
    if not answers.is_file():
        return []
    frame = pl.read_parquet(answers).with_columns(error=(pl.col("prob") - pl.col("label")).abs())
    wrong = frame.filter((pl.col("prob") > 0.5).cast(pl.Int8) != pl.col("label"))
    worst = wrong.sort(["error", "file"], descending=[True, False]).head(count)
    return [
        row | {"uri": data_uri((challenge_dir / row["file"]).read_bytes(), "image/jpeg")}
        for row in worst.select("file", "domain", "level", "label", "prob").to_dicts()
    ]


def write_report(data: ReportData, out_dir: Path) -> Path:
    """`<out_dir>/index.html`, one self-contained page."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "index.html"
    path.write_text(render_report(data), encoding="utf-8")
    return path
