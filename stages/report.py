"""Stage `report`: the self-contained error-analysis page `<paths.reports>/index.html`.

Reads the final metrics, the chosen members' test predictions, the index, GPS clusters, view plan,
training logs and raw images; recomputes view gates with one chosen full-head member on the cached
features of the gallery's images; adds SAM 3 masks and the ablation table where they exist.
"""

from __future__ import annotations

from pathlib import Path

from roadwork.config import load_params, load_paths, save_resolved, section
from roadwork.data.gps import read_clusters, read_weights
from roadwork.data.index import read_index
from roadwork.ensemble import SubmitConfig
from roadwork.features.cache import ExtractConfig
from roadwork.report import analysis
from roadwork.report.gallery import failure_gallery
from roadwork.report.html import ReportConfig, ReportData, render_report
from roadwork.views.plan import read_plan


def main() -> None:
    params = load_params()
    paths = load_paths(params)
    config = section(ReportConfig, params, "report")
    threshold = section(SubmitConfig, params, "submit").threshold
    final = analysis.read_final(Path(paths.metrics) / "final.json")
    index, weights = read_index(Path(paths.prepared)), read_weights(Path(paths.gps))
    predictions = analysis.ensemble_predictions(Path(paths.predictions), final["chosen"], "test")
    test = analysis.scored_frame(predictions, index, weights)
    plan = read_plan(Path(paths.views))
    items, notes = failure_gallery(
        test,
        paths=paths,
        extract=section(ExtractConfig, params, "extract"),
        index=index,
        views=plan,
        chosen=final["chosen"],
        threshold=threshold,
        count=config.gallery,
        width=config.thumb_width,
    )
    live, members, ablations = Path(paths.live), list(final["members"]), Path(config.ablations)
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
