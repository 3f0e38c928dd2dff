"""Stage `extract`: every image's views through the backbone once, into the zarr feature cache.

Resumable (a killed run continues at the first unfinished chunk) and incremental (new images only):
dvc.yaml keeps the cache with `persist: true`. `torchrun --nproc-per-node N -m stages.extract` splits
the work by cache chunk over N processes (one GPU each, or N CPU processes).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from roadwork.config import load_params, load_paths, save_resolved, section
from roadwork.data.index import read_index
from roadwork.device import resolve_device
from roadwork.distributed import barrier, init_ranks, plan_for_rank, rank_device
from roadwork.features.backbone import BackboneConfig, load_backbone, read_manifest
from roadwork.features.cache import ExtractConfig, FeatureCache, expected_attrs
from roadwork.features.extract import extract_with_model, plan_jobs
from roadwork.views.plan import boxes_by_image, read_plan


def main() -> None:
    params = load_params()
    paths = load_paths(params)
    config = section(ExtractConfig, params, "extract")
    backbone_config = section(BackboneConfig, params, "backbone")
    index = read_index(Path(paths.prepared))
    plan, plan_meta = read_plan(Path(paths.views))
    manifest = read_manifest(Path(paths.backbone))
    device = resolve_device(config.device)
    ranks = init_ranks(device)

    def open_and_plan() -> tuple[FeatureCache, pl.DataFrame]:
        cache = FeatureCache.create(
            Path(paths.features),
            copies=1 + config.aug_copies,
            views=plan_meta["n_views"],
            dim=manifest["hidden_size"],
            chunk_rows=config.chunk_rows,
            shard_rows=config.shard_rows,
            attrs=expected_attrs(config, backbone=manifest, plan_meta=plan_meta),
        )
        return cache, plan_jobs(index, cache, config)

    cache, jobs = plan_for_rank(open_and_plan, ranks)
    where = f"extract[{ranks.rank}/{ranks.world}]" if ranks.world > 1 else "extract"
    print(f"{where}: {len(jobs)} image(s) to do, {len(cache.row_of) - len(jobs)} already cached or elsewhere")
    if len(jobs):
        model = load_backbone(Path(paths.backbone), backbone_config.dtype, rank_device(device, ranks))
        counts = extract_with_model(
            model=model,
            cache=cache,
            jobs=jobs,
            raw_root=Path(paths.raw),
            boxes=boxes_by_image(plan),
            config=config,
        )
        rate = counts["images"] / max(counts["seconds"], 1e-9)
        print(
            f"{where}: {counts['images']} images, {counts['views']} views in {counts['seconds']} s "
            f"({rate:.1f} images/s)"
        )
    barrier(ranks)  # every rank's chunks are written before the stage counts as done
    if ranks.rank == 0:
        save_resolved(config, Path(paths.features) / "extract_config.json")


if __name__ == "__main__":
    main()
