"""The report's data, read from the pipeline's outputs, and the page rendered from it."""

from __future__ import annotations

from pathlib import Path

from roadwork.config import Paths
from roadwork.data.gps import read_clusters, read_weights
from roadwork.data.index import read_index
from roadwork.ensemble.submit import SCORES_FILE
from roadwork.features.cache import ExtractConfig
from roadwork.report import analysis
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
    )


def write_report(data: ReportData, out_dir: Path) -> Path:
    """`<out_dir>/index.html`, one self-contained page."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "index.html"
    path.write_text(render_report(data), encoding="utf-8")
    return path
