"""Backbone feature extraction: each image decoded once, cut into its views, run once per copy.

Copy 0 is the clean view; copies 1..aug_copies of a training image go through the heavy augmentation
pipeline, applied per view after resizing and seeded by (seed, image, copy, view); the next
`challenge_copies` copies are validator-style versions of the whole image (a level each, 224 px JPEG,
cut by the rule for small images), seeded by (seed, image, copy). A crop that repeats within an image
(a square image's global, centre and right views; a portrait one's centre and right) goes through the
backbone once. Any run, in any order, on any number of workers, produces the same features. Work
proceeds shard by shard of the cache; a shard's rows are marked done only after their features are
written, so a killed run resumes at the first unfinished shard.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from torch.utils.data import DataLoader, Dataset

from roadwork.config import Paths
from roadwork.data.images import ShardReader
from roadwork.device import resolve_device
from roadwork.distributed import SINGLE, Ranks, plan_for_rank, rank_device
from roadwork.features.backbone import load_backbone, pooled_tokens
from roadwork.features.cache import CacheKey, ExtractConfig, FeatureCache, ShardWriter, expected_attrs
from roadwork.features.manifest import read_manifest
from roadwork.generate.run import read_generated
from roadwork.progress import progress
from roadwork.views.augment import augment_views, build_augment
from roadwork.views.crops import load_views, served_views
from roadwork.views.plan import ViewsConfig, boxes_by_image, read_plan, view_boxes
from roadwork.views.protocols import LEVELS, TRANSFORMS_VERSION, challenge_rng, draw_protocol, protocol_jpeg

RAW, GENERATED = "raw", "generated"  # the datasets an image comes from
DATASET = "dataset"  # the job column naming it


class ViewDataset(Dataset):
    """Item i: all copies of image i as a uint8 tensor `[copies, V, side, side, 3]` (decoded once; a
    tensor, so that DataLoader workers hand it over in shared memory instead of pickling ~19 MB)."""

    def __init__(
        self,
        raw_root: Path | dict[str, Path],
        jobs: pl.DataFrame,
        boxes: dict[str, np.ndarray],
        config: ExtractConfig,
        views: ViewsConfig | None = None,
    ):
        if config.challenge_copies and views is None:
            raise ValueError("extract.challenge_copies needs the view rule (views) to cut 224 px copies")
        # One reader per dataset root: the raw data and, when there is any, the generated training data
        # (a job's `dataset` names its root; jobs without the column are the raw data's).
        roots = raw_root if isinstance(raw_root, dict) else {RAW: raw_root}
        self.readers = {name: ShardReader(root) for name, root in roots.items()}
        if DATASET not in jobs.columns:
            jobs = jobs.with_columns(pl.lit(RAW).alias(DATASET))
        self.jobs = jobs.select(
            "image_id", DATASET, "shard", "row", "width", "height", "cache_row", "copies"
        ).to_dicts()
        self.boxes = boxes
        self.config = config
        self.views = views
        self.augment = build_augment(config.side) if config.aug_copies else None

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor]:
        job = self.jobs[i]
        data = self.readers[job[DATASET]].read(job["shard"], job["row"])
        size = (job["width"], job["height"])  # the plan's size: a mismatching image fails loudly
        clean = load_views(data, self.boxes[job["image_id"]], self.config.side, size=size)
        out = np.empty((job["copies"], *clean.shape), dtype=np.uint8)
        out[0] = clean
        for copy in range(1, job["copies"]):
            if copy <= self.config.aug_copies:
                out[copy] = augment_views(
                    clean, transform=self.augment, seed=self.config.seed, image_id=job["image_id"], copy=copy
                )
            else:
                key = f"{job['image_id']}/{copy}"
                stratum = (copy - 1 - self.config.aug_copies, self.config.challenge_copies)
                out[copy] = challenge_copy(
                    data, size, key=key, stratum=stratum, config=self.config, views=self.views
                )
        return job["cache_row"], torch.from_numpy(out)


def challenge_copy(
    data: bytes,
    size: tuple[int, int],
    *,
    key: str,
    config: ExtractConfig,
    views: ViewsConfig,
    stratum: tuple[int, int] = (0, 1),
) -> np.ndarray:
    """A validator-style copy's views `[V, side, side, 3]`: a protocol drawn by its share (the j-th of n
    copies of an image in stratum (j, n), so an image's copies cover the protocols), a level 0-3, the
    protocol's JPEG, cut as the served model cuts a query (seeded by `key`: image and copy)."""
    rng = challenge_rng(config.seed, key)
    protocol = draw_protocol(rng, config.challenge_protocols, stratum)
    level = int(rng.integers(0, len(LEVELS)))
    jpeg = protocol_jpeg(data, size, protocol=protocol, level=level, rng=rng)
    return served_views(jpeg, views=views, side=config.side)


def _collate(items: list[tuple[int, torch.Tensor]]) -> list[tuple[int, torch.Tensor]]:
    return items  # images carry different numbers of copies: keep them apart


def full_copies(config: ExtractConfig) -> int:
    """Copies of a training image: the clean one, the augmented ones, the validator-style ones."""
    return 1 + config.aug_copies + config.challenge_copies


def plan_jobs(index: pl.DataFrame, cache: FeatureCache, config: ExtractConfig) -> pl.DataFrame:
    """Rows of `index` (in `config.splits`) not yet done in the cache, with their cache row and copies."""
    rows = index.filter(pl.col("split").is_in(list(config.splits)))
    cache_rows = cache.ensure_rows(rows["image_id"].to_list())
    rows = rows.with_columns(
        cache_row=pl.Series(cache_rows),
        copies=pl.when(pl.col("split") == "train").then(full_copies(config)).otherwise(1).cast(pl.Int64),
    )
    return rows.filter(pl.Series(~cache.done_mask(cache_rows))).sort("cache_row")


Embed = Callable[[np.ndarray | torch.Tensor], torch.Tensor]  # uint8 [n, side, side, 3] -> [n, 3, D]


@torch.inference_mode()
def pooled_views(
    model: torch.nn.Module, views: np.ndarray | torch.Tensor, config: ExtractConfig
) -> torch.Tensor:
    """uint8 `[n, side, side, 3]` -> float32 `[n, 3, D]` pooled tokens on the model's device. On a GPU
    the work is only queued: reading the values waits for it, so the caller can do other work first."""
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    pixels = torch.as_tensor(views).to(device).permute(0, 3, 1, 2).to(torch.float32).div_(255.0)
    mean = torch.tensor(config.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(config.std, device=device).view(1, 3, 1, 1)
    pixels = ((pixels - mean) / std).to(dtype)
    return pooled_tokens(model, pixels).float()


def distinct_views(views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A CPU batch's distinct views, in first-seen order, and per view the index of its twin among them.

    A square image's global, centre and right boxes are the same crop (every 224 px validator query),
    as are all the views of a small image under `views.small_rule: global`. Views are keyed by a strided
    sample of their bytes, and a key seen before is confirmed by comparing the views in full: exact, and
    nearly free when nothing repeats.
    """
    flat = views.reshape(len(views), -1)
    keys = flat[:, :: max(1, flat.shape[1] // 1024)].numpy()
    seen: dict[bytes, list[int]] = {}
    keep: list[int] = []
    inverse = torch.empty(len(views), dtype=torch.long)
    for i, key in enumerate(keys):
        twins = seen.setdefault(key.tobytes(), [])
        match = next((j for j in twins if torch.equal(flat[keep[j]], flat[i])), None)
        if match is None:
            match = len(keep)
            twins.append(match)
            keep.append(i)
        inverse[i] = match
    return (views, inverse) if len(keep) == len(views) else (views[keep], inverse)


def once_per_view(embed: Embed) -> Embed:
    """`embed` run on a batch's distinct views only, its output copied back to every view."""

    def run(views: np.ndarray | torch.Tensor) -> torch.Tensor:
        unique, inverse = distinct_views(torch.as_tensor(views))
        out = embed(unique)
        return out if len(unique) == len(inverse) else out[inverse.to(out.device)]

    return run


def embed_views(
    model: torch.nn.Module, views: np.ndarray | torch.Tensor, config: ExtractConfig
) -> np.ndarray:
    """uint8 `[n, side, side, 3]` -> float32 `[n, 3, D]` pooled tokens, as numpy (a view repeated in the
    batch goes through the backbone once)."""
    return once_per_view(lambda v: pooled_views(model, v, config))(views).cpu().numpy()


def image_features(
    model: torch.nn.Module, data: bytes, *, views: ViewsConfig, config: CacheKey
) -> np.ndarray:
    """`[V, 3, D]` pooled tokens of one image's clean views, rounded to float16 as the cache stores
    them: what the served model sees of an image."""
    pixels = served_views(data, views=views, side=config.side)
    return embed_views(model, pixels, config).astype(np.float16)


def view_embedder(model: torch.nn.Module, config: ExtractConfig, batch_views: int) -> Embed:
    """`pooled_views` with `model`, or with `extract.compile` with the compiled model, fed batches of
    exactly `batch_views` views (the last one padded with copies of its last view): a compiled graph is
    specialised to its input shape, and each new batch size would compile again (~30 s on a GPU)."""
    if not config.compile:
        return lambda views: pooled_views(model, views, config)
    compiled = torch.compile(model, dynamic=False)

    def embed(views: np.ndarray | torch.Tensor) -> torch.Tensor:
        views, out = torch.as_tensor(views), []
        for start in range(0, len(views), batch_views):
            part = views[start : start + batch_views]
            padding = part[-1:].expand(batch_views - len(part), *part.shape[1:])
            out.append(pooled_views(compiled, torch.cat([part, padding]), config)[: len(part)])
        return torch.cat(out)

    return embed


def distinct_on_device(
    batch: list[tuple[int, torch.Tensor]], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch's items as one tensor of their distinct views on `device` (each image's repeated crops
    dropped on the CPU), and the index into it of every view, in order. Each item goes to the GPU on
    its own, asynchronously from page-locked memory (no host-side concatenation of the batch)."""
    parts, inverses, offset = [], [], 0
    for _, item in batch:
        unique, inverse = distinct_views(item.flatten(0, 1))
        if device.type == "cuda" and not unique.is_pinned():  # a copy without the repeats
            unique = unique.pin_memory()
        parts.append(unique.to(device, non_blocking=True))
        inverses.append(inverse + offset)
        offset += len(unique)
    return torch.cat(parts), torch.cat(inverses)


def extract_with_model(
    *,
    model: torch.nn.Module,
    cache: FeatureCache,
    jobs: pl.DataFrame,
    raw_root: Path | dict[str, Path],
    boxes: dict[str, np.ndarray],
    config: ExtractConfig,
    views: ViewsConfig | None = None,
) -> dict[str, float]:
    """Fill the cache for `jobs` (sorted by cache row); returns counters for the metrics."""
    writer = ShardWriter(cache, jobs["cache_row"].to_list())
    n_views = len(next(iter(boxes.values()))) if boxes else 1
    embed = view_embedder(model, config, config.batch_images * full_copies(config) * n_views)
    device = next(model.parameters()).device
    loader = DataLoader(
        ViewDataset(raw_root, jobs, boxes, config, views),
        batch_size=config.batch_images,
        num_workers=config.workers,
        collate_fn=_collate,
        prefetch_factor=4 if config.workers else None,
        pin_memory=device.type == "cuda",  # page-locked: the copies to the GPU below do not block
    )
    started, done_views, embedded, pending = time.perf_counter(), 0, 0, None

    def write(batch: list[tuple[int, torch.Tensor]], pooled: torch.Tensor, inverse: torch.Tensor) -> None:
        pooled, offset = pooled.cpu().numpy()[inverse.numpy()], 0  # waits for the forward
        for cache_row, v in batch:
            copies, views = v.shape[:2]
            features = pooled[offset : offset + copies * views].reshape(copies, views, 3, -1)
            writer.add(cache_row, cache.row_values(features))
            offset += copies * views

    for batch in progress(loader, total=len(jobs), desc="extract", unit="img", count=len):
        unique, inverse = distinct_on_device(batch, device)
        pooled = embed(unique)  # queued on a GPU: the previous batch is written while this one runs
        if pending:
            write(*pending)
        pending = (batch, pooled, inverse)
        done_views, embedded = done_views + len(inverse), embedded + len(unique)
    if pending:
        write(*pending)
    seconds = round(time.perf_counter() - started, 2)
    return {"images": len(jobs), "views": done_views, "embedded_views": embedded, "seconds": seconds}


def run_extract(
    *, paths: Paths, config: ExtractConfig, dtype: str, index: pl.DataFrame, ranks: Ranks = SINGLE
) -> dict[str, Any]:
    """The `extract` stage's work for this rank: open (or create) the cache, append the new images, and
    fill the rows of this rank's shards that are not done yet; the backbone loads only if any are left.
    Returns counters: images to do, already cached (or another rank's), and what was computed."""
    plan, plan_meta = read_plan(Path(paths.views))
    manifest = read_manifest(Path(paths.backbone), "backbone")

    rows, roots = index.with_columns(pl.lit(RAW).alias(DATASET)), {RAW: Path(paths.raw)}
    generated = read_generated(Path(paths.generated_train))
    if generated is not None:  # the generated training images: cached as training rows of their own
        rows = pl.concat(
            [rows, generated.with_columns(pl.lit(GENERATED).alias(DATASET))], how="diagonal_relaxed"
        )
        roots[GENERATED] = Path(paths.generated_train)
    views = ViewsConfig(**plan_meta["config"])  # the rule the plan was made with

    def open_and_plan() -> tuple[FeatureCache, pl.DataFrame]:
        cache = FeatureCache.create(
            Path(paths.features),
            copies=full_copies(config),
            views=plan_meta["n_views"],
            dim=manifest["hidden_size"],
            chunk_rows=config.chunk_rows,
            shard_rows=config.shard_rows,
            attrs=expected_attrs(config, backbone=manifest, plan_meta=plan_meta)
            | {
                "challenge_copies": config.challenge_copies,
                "challenge_protocols": config.challenge_protocols,
                "validator_transforms": TRANSFORMS_VERSION,
            },
        )
        return cache, plan_jobs(rows, cache, config)

    cache, jobs = plan_for_rank(open_and_plan, ranks)
    counts: dict[str, Any] = {"todo": len(jobs), "skipped": len(cache.row_of) - len(jobs)}
    if len(jobs):
        device = rank_device(resolve_device(config.device), ranks)
        model = load_backbone(Path(paths.backbone), dtype, device)
        boxes = boxes_by_image(plan)  # the plan's images; a generated image's boxes follow from its size
        for image_id, w, h in (
            jobs.filter(pl.col(DATASET) == GENERATED).select("image_id", "width", "height").iter_rows()
        ):
            boxes[image_id] = view_boxes(w, h, views)
        counts |= extract_with_model(
            model=model, cache=cache, jobs=jobs, raw_root=roots, boxes=boxes, config=config, views=views
        )
    return counts


def embed_files(
    model: torch.nn.Module, files: list[Path], *, views: ViewsConfig, config: CacheKey
) -> np.ndarray:
    """`[n, V, 3, D]` float16: `image_features` of each image file, in order."""
    return np.stack([image_features(model, Path(f).read_bytes(), views=views, config=config) for f in files])
