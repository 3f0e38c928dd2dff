"""TTA backbone passes into a cache keyed by (image, augmentation).

Layout of `features/tta.zarr`: one row cache (`roadwork.features.cache.RowCache`) per augmentation,
`aug-<digest of the spec>/`, holding `tokens` [N, V, 3, D] float16 (CLS, patch mean, patch max per view,
as in the feature cache), `image_id` and `done`. Its attrs are the feature cache's fingerprints (backbone,
view rule, side, mean, std) plus the spec itself, so:
- adding an augmentation computes only the new one (a new sub-cache), removing one computes nothing;
- changing the backbone, view rule or preprocessing rebuilds exactly the affected sub-caches;
- FOODS settings (distance, keep share, temperature) are not in any attrs: changing them computes nothing.
Each image is decoded once for all its missing augmentations; rows are marked done shard by shard after
their features are written, so a killed run resumes at the first unfinished shard, and new images are
appended (incremental), as in `extract`. Under torchrun each rank fills its own shards of every spec.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import zarr
from torch.utils.data import DataLoader, Dataset

from roadwork.data.images import ShardReader
from roadwork.distributed import SINGLE, Ranks, owns
from roadwork.features.cache import TOKENS as FEATURE_TOKENS
from roadwork.features.cache import ExtractConfig, FeatureCache, RowCache, ShardWriter, expected_attrs
from roadwork.progress import progress
from roadwork.tta.augment import AugSpec, ImageViews
from roadwork.views.plan import ViewsConfig, n_views

TOKENS = "tokens"
CACHE_FORMAT = 1  # bump when the meaning of the stored TTA features changes


class TtaCache(RowCache):
    """One augmentation's cached backbone features."""

    kind = "TTA cache"


def tta_attrs(config: ExtractConfig, *, backbone: dict[str, Any], plan_meta: dict[str, Any]) -> dict:
    """What every augmentation's features depend on besides the spec: the feature cache's fingerprints
    without the training-augmentation seed (test-time augmentations are deterministic)."""
    attrs = expected_attrs(config, backbone=backbone, plan_meta=plan_meta)
    del attrs["aug_seed"]
    return attrs | {"tta_format": CACHE_FORMAT}


def spec_path(root: Path, spec: AugSpec) -> Path:
    return Path(root) / f"aug-{spec.digest()}"


def spec_attrs(attrs: dict[str, Any], spec: AugSpec) -> dict[str, Any]:
    return attrs | {"augmentation": spec.changes(), "augmentation_key": spec.key()}


def open_for_writing(
    root: Path,
    specs: tuple[AugSpec, ...],
    *,
    attrs: dict,
    views: int,
    dim: int,
    chunk_rows: int,
    shard_rows: int,
) -> dict[AugSpec, TtaCache]:
    """The sub-cache of every spec, created when new or stale; the root group lists them by name."""
    group = zarr.open_group(Path(root), mode="a")
    group.attrs.update({f"aug-{s.digest()}": s.key() for s in specs})
    arrays = {TOKENS: ((views, 3, dim), "float16")}
    shape = {"chunk_rows": chunk_rows, "shard_rows": shard_rows}
    return {
        s: TtaCache.create_or_open(spec_path(root, s), arrays=arrays, attrs=spec_attrs(attrs, s), **shape)
        for s in specs
    }


def open_checked(root: Path, specs: tuple[AugSpec, ...], attrs: dict) -> dict[AugSpec, TtaCache]:
    """Readers: every spec's sub-cache, refused when stale."""
    return {s: TtaCache.open_checked(spec_path(root, s), spec_attrs(attrs, s)) for s in specs}


def copy_clean_views(cache: TtaCache, features: FeatureCache, image_ids: list[str]) -> int:
    """Fill the identity augmentation's rows of `image_ids` not done yet with the feature cache's clean
    copy (copy 0: the same views, bit for bit), so the backbone never runs twice for an image and view.
    Returns the rows filled. The feature cache must share the TTA cache's fingerprints (same extract
    config, backbone and view rule); an image missing from it raises, naming the cache."""
    rows = cache.ensure_rows(image_ids)
    todo = ~cache.done_mask(rows)
    if not todo.any():
        return 0
    ids = [i for i, t in zip(image_ids, todo, strict=True) if t]
    tokens = np.stack([features.read_array(name, ids)[:, 0] for name in FEATURE_TOKENS], axis=2)
    cache.write(rows[todo], {TOKENS: tokens.astype(np.float16)})
    return len(ids)


class _ImageJobs(Dataset):
    """Item i: (i, [(spec index, uint8 [V, side, side, 3])]) for the specs image i still lacks."""

    def __init__(self, raw_root: Path, jobs: list[dict], specs: list[AugSpec], views: ViewsConfig, side: int):
        self.reader = ShardReader(raw_root)
        self.jobs, self.specs, self.views, self.side = jobs, specs, views, side

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, i: int) -> tuple[int, list[tuple[int, np.ndarray]]]:
        job = self.jobs[i]
        image = ImageViews(
            self.reader.read(job["shard"], job["row"]), (job["width"], job["height"]), self.views, self.side
        )
        return i, [(k, image(self.specs[k])) for k in job["todo"]]


def _as_is(item: Any) -> Any:
    return item  # keep numpy views (the default would convert them to tensors)


def plan_tta_jobs(
    jobs: pl.DataFrame, caches: dict[AugSpec, TtaCache], ranks: Ranks = SINGLE
) -> tuple[list[dict], dict]:
    """Per image (index rows: image_id, shard, row, width, height) the specs not cached yet whose row lies
    in this rank's shards, and the cache row of every (spec, image); images with nothing to do are dropped."""
    specs = list(caches)
    ids = jobs["image_id"].to_list()
    rows = {s: caches[s].ensure_rows(ids) for s in specs}
    todo = np.stack(
        [~caches[s].done_mask(rows[s]) & owns(rows[s], caches[s].shard_rows, ranks) for s in specs], axis=1
    )
    out = []
    for i, job in enumerate(jobs.select("image_id", "shard", "row", "width", "height").iter_rows(named=True)):
        if todo[i].any():
            out.append(job | {"index": i, "todo": np.flatnonzero(todo[i]).tolist()})
    return out, rows


def extract_tta(
    *,
    caches: dict[AugSpec, TtaCache],
    jobs: pl.DataFrame,
    raw_root: Path,
    views: ViewsConfig,
    side: int,
    embed: Callable[[np.ndarray], np.ndarray],  # uint8 [n, side, side, 3] -> float [n, 3, D]
    batch_views: int,
    workers: int = 0,
    ranks: Ranks = SINGLE,
) -> dict[str, Any]:
    """Fill every spec's cache for the images of `jobs` (this rank's shards); only (image, spec) pairs not
    done are computed. Rank 0 must have appended the rows first (`roadwork.distributed.rank_zero_first`)."""
    specs = list(caches)
    todo, rows = plan_tta_jobs(jobs, caches, ranks)
    writers = [
        ShardWriter(caches[s], [int(rows[s][job["index"]]) for job in todo if k in job["todo"]])
        for k, s in enumerate(specs)
    ]
    started, counts = time.perf_counter(), {s.key(): 0 for s in specs}
    loader = DataLoader(
        _ImageJobs(raw_root, todo, specs, views, side),
        batch_size=None,  # one image per item: its views for every missing spec
        collate_fn=_as_is,
        num_workers=workers,
        prefetch_factor=4 if workers else None,
    )
    queue: list[tuple[int, int, np.ndarray]] = []  # (spec index, cache row, views) awaiting the backbone

    def run_queue() -> None:
        if queue:
            pooled = embed(np.concatenate([v for _, _, v in queue])).astype(np.float16)
            n = len(queue[0][2])
            for j, (k, row, _) in enumerate(queue):
                writers[k].add(row, {TOKENS: pooled[j * n : (j + 1) * n]})
                counts[specs[k].key()] += 1
            queue.clear()

    for i, items in progress(loader, total=len(todo), desc="tta", unit="img"):
        for k, v in items:
            queue.append((k, int(rows[specs[k]][todo[i]["index"]]), v))
            if sum(len(q[2]) for q in queue) >= batch_views:
                run_queue()
    run_queue()
    return {
        "images": len(todo),
        "views": sum(counts.values()) * n_views(views),
        "computed": counts,
        "seconds": round(time.perf_counter() - started, 2),
    }


def read_tokens(cache: TtaCache, image_ids: list[str]) -> np.ndarray:
    """float16 [n, V, 3, D] of one augmentation for `image_ids` (in that order)."""
    return cache.read_array(TOKENS, image_ids)
