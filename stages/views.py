"""Stage `views`: the per-image view plan (12 boxes from each image's real width/height)."""

from __future__ import annotations

from pathlib import Path

from roadwork.config import load_paths, load_stage_params, save_resolved, section
from roadwork.data.index import read_index
from roadwork.views.plan import ViewsConfig, build_plan, write_plan


def main() -> None:
    params = load_stage_params("views")
    paths = load_paths(params)
    config = section(ViewsConfig, params, "views")
    plan = build_plan(read_index(Path(paths.prepared)), config)
    meta = write_plan(plan, paths.views, config)
    save_resolved(config, Path(paths.views) / "config.json")
    print(
        f"views: {meta['images']} images x {meta['n_views']} views -> {paths.views} "
        f"(fingerprint {meta['fingerprint'][:12]})"
    )


if __name__ == "__main__":
    main()
