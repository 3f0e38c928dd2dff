"""Stage `masks`: SAM 3 text-prompted masks per image, reduced to coarse grids per view, into zarr.

With `masks.source: truth` the masks are instead rasterised from the synthetic data's ground-truth
polygons (an ablation; `roadwork.features.truth`). Resumable (a killed run continues at the first
unfinished shard) and incremental (new images only): dvc.yaml keeps the cache with `persist: true`.
`torchrun --nproc-per-node N -m stages.masks` splits the work by cache shard over N processes.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from roadwork.config import load_params, load_paths, save_resolved, section
from roadwork.data.index import read_index
from roadwork.device import resolve_device
from roadwork.distributed import barrier, init_ranks, plan_for_rank, rank_device
from roadwork.features.masks import MaskCache, expected_attrs, fill_masks, plan_jobs
from roadwork.features.sam import MasksConfig, load_sam
from roadwork.features.truth import fill_truth_masks, read_truth, source_manifest, truth_path
from roadwork.views.plan import boxes_by_image, read_plan


def main() -> None:
    params = load_params()
    paths = load_paths(params)
    config = section(MasksConfig, params, "masks")
    manifest = source_manifest(config, sam_dir=Path(paths.sam), raw_root=Path(paths.raw))
    index = read_index(Path(paths.prepared))
    plan, plan_meta = read_plan(Path(paths.views))
    device = resolve_device(config.device)
    ranks = init_ranks(device)

    def open_and_plan() -> tuple[MaskCache, pl.DataFrame]:
        cache = MaskCache.create(
            Path(paths.masks),
            config=config,
            views=plan_meta["n_views"],
            attrs=expected_attrs(config, sam=manifest, plan_meta=plan_meta),
        )
        return cache, plan_jobs(index, cache, config)

    cache, jobs = plan_for_rank(open_and_plan, ranks)
    where = f"masks[{ranks.rank}/{ranks.world}]" if ranks.world > 1 else "masks"
    print(
        f"{where} ({config.source}): {len(jobs)} image(s) to do, "
        f"{len(cache.row_of) - len(jobs)} already cached or elsewhere"
    )
    if len(jobs):
        boxes = boxes_by_image(plan)
        if config.source == "truth":
            truth = read_truth(truth_path(Path(paths.raw)))
            counts = fill_truth_masks(cache=cache, jobs=jobs, truth=truth, boxes=boxes, config=config)
        else:
            model, processor = load_sam(Path(paths.sam), config.dtype, rank_device(device, ranks))
            counts = fill_masks(
                model=model,
                processor=processor,
                cache=cache,
                jobs=jobs,
                raw_root=Path(paths.raw),
                boxes=boxes,
                config=config,
            )
        rate = counts["images"] / max(counts["seconds"], 1e-9)
        print(f"{where}: {counts['images']} images in {counts['seconds']} s ({rate:.1f} images/s)")
        for prompt in config.prompts:
            print(f"{where}: mean image coverage {counts[f'coverage/{prompt}']:.3f}  {prompt!r}")
    barrier(ranks)  # every rank's shards are written before the stage counts as done
    if ranks.rank == 0:
        save_resolved(config, Path(paths.masks) / "masks_config.json")


if __name__ == "__main__":
    main()
