"""Stage `report`: the self-contained error-analysis page `<paths.reports>/index.html`.

Reads the final metrics, the chosen members' test predictions, the index, GPS clusters, view plan,
training logs and raw images; recomputes view gates with one chosen full-head member on the cached
features of the gallery's images; adds SAM 3 masks and the ablation table where they exist.
"""

from __future__ import annotations

from pathlib import Path

from roadwork.config import load_paths, load_stage_params, save_resolved, section, subset
from roadwork.ensemble import Threshold
from roadwork.features.cache import CacheKey
from roadwork.report.build import report_data, write_report
from roadwork.report.html import ReportConfig


def main() -> None:
    params = load_stage_params("report")
    paths = load_paths(params)
    config = section(ReportConfig, params, "report")
    data = report_data(
        paths=paths,
        config=config,
        extract=subset(CacheKey, params, "extract"),
        threshold=subset(Threshold, params, "submit").threshold,
    )
    page = write_report(data, Path(paths.reports))
    save_resolved(config, Path(paths.reports) / "report_config.json")
    size = page.stat().st_size / 1024
    print(f"report: {len(data.test)} test images, {len(data.gallery)} failures -> {page} ({size:.0f} KB)")


if __name__ == "__main__":
    main()
