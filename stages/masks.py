"""Stage `masks`: SAM 3 text-prompted masks per image, reduced to coarse grids per view, into zarr.

With `masks.source: truth` the masks are instead rasterised from the synthetic data's ground-truth
polygons (an ablation; `roadwork.features.truth`). Resumable (a killed run continues at the first
unfinished chunk) and incremental (new images only): dvc.yaml keeps the cache with `persist: true`.
"""

from __future__ import annotations

from pathlib import Path

from roadwork.config import load_params, load_paths, save_resolved, section
from roadwork.data.index import read_index
from roadwork.device import resolve_device
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
    cache = MaskCache.create(
        Path(paths.masks),
        config=config,
        views=plan_meta["n_views"],
        attrs=expected_attrs(config, sam=manifest, plan_meta=plan_meta),
    )
    jobs = plan_jobs(index, cache, config)
    print(
        f"masks ({config.source}): {len(jobs)} image(s) to do, {len(cache.row_of) - len(jobs)} already cached"
    )
    if len(jobs):
        boxes = boxes_by_image(plan)
        if config.source == "truth":
            truth = read_truth(truth_path(Path(paths.raw)))
            counts = fill_truth_masks(cache=cache, jobs=jobs, truth=truth, boxes=boxes, config=config)
        else:
            model, processor = load_sam(Path(paths.sam), config.dtype, resolve_device(config.device))
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
        print(f"masks: {counts['images']} images in {counts['seconds']} s ({rate:.1f} images/s)")
        for prompt in config.prompts:
            print(f"masks: mean image coverage {counts[f'coverage/{prompt}']:.3f}  {prompt!r}")
    save_resolved(config, Path(paths.masks) / "masks_config.json")


if __name__ == "__main__":
    main()
