"""A small `extract` run over a NATIX-schema dataset, importable by tests and runnable as a child process
that SIGKILLs itself at a chosen point (the kill-and-resume test).

    python -m tests.extract_job ROOT INDEX CACHE POINT K
        POINT: forward (in the K-th backbone forward), resize (at the K-th zarr array resize, i.e. while
        appending rows), write (at the K-th zarr slice write: values or `done` flags), or
        none (no kill: e.g. under `torchrun --nproc-per-node 2`, where the ranks split the shards)
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import polars as pl
import torch
import zarr

from roadwork.distributed import Ranks, barrier, init_ranks, plan_for_rank
from roadwork.features.backbone import TinyBackboneConfig, build_tiny
from roadwork.features.cache import ExtractConfig, FeatureCache, expected_attrs
from roadwork.features.extract import extract_with_model, plan_jobs
from roadwork.views.plan import ViewsConfig, boxes_by_image, build_plan, rule_fingerprint
from tests.natix_fixture import SCENE_SIZES, scene_shard

VIEWS = ViewsConfig(grid=3, overlap=0.25)
TINY = TinyBackboneConfig(
    seed=0,
    hidden_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=64,
    num_register_tokens=4,
    patch_size=16,
)
# shard_rows a multiple of batch_images: a resumed run cuts the same batches as an uninterrupted one.
CONFIG = ExtractConfig(
    side=32,
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    aug_copies=1,
    seed=0,
    batch_images=2,
    chunk_rows=2,
    shard_rows=4,
    workers=0,
    device="cpu",
    splits=("train", "test"),
    compile=False,
)
MANIFEST = {"fingerprint": "tiny-test", "patch_size": 16}
SINGLE = Ranks(rank=0, world=1, local=0)


def write_images(
    root: Path, shard: str, first: int, count: int, sizes: tuple[tuple[int, int], ...] = SCENE_SIZES
) -> pl.DataFrame:
    """`count` images as shard `shard`, all train but the last (test: no augmented copy), grained so that
    only identical boxes cut identical views: the backbone's view counts are then known exactly."""
    return scene_shard(root, shard, first, count, test_last=True, sizes=sizes, noise=8)


def run(
    root: Path, index: pl.DataFrame, path: Path, model: torch.nn.Module, ranks: Ranks = SINGLE
) -> tuple[FeatureCache, pl.DataFrame]:
    """One `extract` stage run (this rank's part of it) over `index` into the cache at `path`;
    returns (cache, the jobs this rank did)."""
    plan = build_plan(index, VIEWS)
    plan_meta = {"rule_fingerprint": rule_fingerprint(VIEWS), "n_views": 12}
    attrs = expected_attrs(CONFIG, backbone=MANIFEST, plan_meta=plan_meta)

    def open_and_plan() -> tuple[FeatureCache, pl.DataFrame]:
        cache = FeatureCache.create(
            path, copies=2, views=12, dim=TINY.hidden_size, chunk_rows=2, shard_rows=4, attrs=attrs
        )
        return cache, plan_jobs(index, cache, CONFIG)

    cache, jobs = plan_for_rank(open_and_plan, ranks)
    extract_with_model(
        model=model,
        cache=cache,
        jobs=jobs,
        raw_root=root,
        boxes=boxes_by_image(plan),
        config=CONFIG,
    )
    barrier(ranks)
    return cache, jobs


def kill_at(point: str, k: int, model: torch.nn.Module) -> None:
    """Arrange for this process to SIGKILL itself (no cleanup of any kind) at the k-th `point`."""
    calls = [0]

    def tick() -> None:
        calls[0] += 1
        if calls[0] == k:
            os.kill(os.getpid(), signal.SIGKILL)

    if point == "none":
        return
    if point == "forward":
        model.register_forward_pre_hook(lambda *_: tick())
        return
    name = {"resize": "resize", "write": "__setitem__"}[point]
    original = getattr(zarr.Array, name)

    def patched(self, *args, **kwargs):
        tick()
        return original(self, *args, **kwargs)

    setattr(zarr.Array, name, patched)


def main() -> None:
    root, index, cache, point, k = sys.argv[1:]
    model = build_tiny(TINY)
    kill_at(point, int(k), model)
    ranks = init_ranks(torch.device("cpu"))
    _, jobs = run(Path(root), pl.read_parquet(index), Path(cache), model, ranks)
    print(f"rank {ranks.rank}/{ranks.world}: rows {jobs['cache_row'].to_list()}")


if __name__ == "__main__":
    main()
