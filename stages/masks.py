"""Stage `masks`: SAM 3 text-prompted masks per image, reduced to coarse grids per view, into zarr.

With `masks.source: truth` the masks are instead rasterised from the synthetic data's ground-truth
polygons (an ablation; `roadwork.masks.truth`). Resumable (a killed run continues at the first
unfinished shard) and incremental (new images only): dvc.yaml keeps the cache with `persist: true`.
`torchrun --nproc-per-node N -m stages.masks` splits the work by cache shard over N processes.
"""

from __future__ import annotations

from pathlib import Path

from roadwork.config import load_paths, load_stage_params, save_resolved, section
from roadwork.data.index import read_index
from roadwork.device import resolve_device
from roadwork.distributed import barrier, init_ranks
from roadwork.masks.config import MasksConfig
from roadwork.masks.fill import run_masks


def main() -> None:
    params = load_stage_params("masks")
    paths = load_paths(params)
    config = section(MasksConfig, params, "masks")
    ranks = init_ranks(resolve_device(config.device))
    counts = run_masks(paths=paths, config=config, index=read_index(Path(paths.prepared)), ranks=ranks)
    where = f"masks[{ranks.rank}/{ranks.world}]" if ranks.world > 1 else "masks"
    todo, skipped = counts["todo"], counts["skipped"]
    print(f"{where} ({config.source}): {todo} image(s) to do, {skipped} already cached or elsewhere")
    if counts["todo"]:
        rate = counts["images"] / max(counts["seconds"], 1e-9)
        print(f"{where}: {counts['images']} images in {counts['seconds']} s ({rate:.1f} images/s)")
        for prompt in config.prompts:
            print(f"{where}: mean image coverage {counts[f'coverage/{prompt}']:.3f}  {prompt!r}")
    barrier(ranks)  # every rank's shards are written before the stage counts as done
    if ranks.rank == 0:
        save_resolved(config, Path(paths.masks) / "masks_config.json")


if __name__ == "__main__":
    main()
