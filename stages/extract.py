"""Stage `extract`: every image's views through the backbone once, into the zarr feature cache.

Resumable (a killed run continues at the first unfinished shard) and incremental (new images only):
dvc.yaml keeps the cache with `persist: true`. `torchrun --nproc-per-node N -m stages.extract` splits
the work by cache shard over N processes (one GPU each, or N CPU processes).
"""

from __future__ import annotations

from pathlib import Path

from roadwork.config import load_paths, load_stage_params, save_resolved, section, subset
from roadwork.data.index import read_index
from roadwork.device import resolve_device
from roadwork.distributed import barrier, init_ranks
from roadwork.features.backbone import BackboneDtype
from roadwork.features.cache import ExtractConfig
from roadwork.features.extract import run_extract


def main() -> None:
    params = load_stage_params("extract")
    paths = load_paths(params)
    config = section(ExtractConfig, params, "extract")
    ranks = init_ranks(resolve_device(config.device))
    counts = run_extract(
        paths=paths,
        config=config,
        dtype=subset(BackboneDtype, params, "backbone").dtype,
        index=read_index(Path(paths.prepared)),
        ranks=ranks,
    )
    where = f"extract[{ranks.rank}/{ranks.world}]" if ranks.world > 1 else "extract"
    print(f"{where}: {counts['todo']} image(s) to do, {counts['skipped']} already cached or elsewhere")
    if counts["todo"]:
        rate = counts["images"] / max(counts["seconds"], 1e-9)
        print(
            f"{where}: {counts['images']} images, {counts['views']} views ({counts['embedded_views']} "
            f"distinct, through the backbone) in {counts['seconds']} s ({rate:.1f} images/s)"
        )
    barrier(ranks)  # every rank's shards are written before the stage counts as done
    if ranks.rank == 0:
        save_resolved(config, Path(paths.features) / "extract_config.json")


if __name__ == "__main__":
    main()
