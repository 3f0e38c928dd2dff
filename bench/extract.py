"""Benchmark of `extract`: the JPEG decode floor, the view path, peak memory, and the stage on a GPU.

    python -m bench.extract decode --images 6 --side 112 512   # per image, one core, full-size JPEGs
    python -m bench.extract memory --images 500 2000           # peak RSS of the stage on N images
    python -m bench.extract stage --images 192 --side 512 --workers 12 --full [--compile]

`decode` renders full-size synthetic scenes (4032x3024 phone photos and 1920x1080 frames, the
generator at scale 1) and times, per image on one core:
    decode      bare JPEG decode at full resolution (PIL), the floor of any view path
    naive       full decode, then each of the 12 views cropped and resized with LANCZOS (the obvious code)
    views       what `extract` does: `load_views` (reduced-scale JPEG decode where the views allow it,
                antialiased resize straight from the decoded pixels)
    item        the whole `extract` data path minus the model: a `ViewDataset` item (views + one
                augmented copy), as the DataLoader workers compute it
`memory` runs `extract_with_model` (tiny backbone) over N generated 1920x1080 images in a child
process per N and reports its peak RSS: with streaming shard writes it must not grow with N.
`stage` runs `extract_with_model` over N generated 1920x1080 training images (one augmented copy each)
with the full ViT-H+/16 (random weights, bf16; `--full`) or the tiny backbone, on the GPU when there is
one: images and views per second of the whole stage (DataLoader decode and views in `--workers`
processes, forward, shard writes), a cold run (with `--compile`: compilation included) then a warm one.
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

from roadwork.data.images import decode
from roadwork.features.backbone import TinyBackboneConfig, build_tiny
from roadwork.features.cache import ExtractConfig, FeatureCache
from roadwork.features.extract import ViewDataset, extract_with_model, plan_jobs
from roadwork.synth.scene import SceneSpec, render_scene
from roadwork.views.crops import load_views
from roadwork.views.plan import ViewsConfig, boxes_by_image, build_plan, view_boxes

ROOT = Path(__file__).resolve().parents[1]  # the project: children run as `python -m bench.<name>` here


SIZES = {"4032x3024": (4032, 3024), "1920x1080": (1920, 1080)}
TINY = TinyBackboneConfig(
    seed=0,
    hidden_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    intermediate_size=256,
    num_register_tokens=4,
    patch_size=16,
)
VIEWS = ViewsConfig(grid=3, overlap=0.25)


def jpeg(width: int, height: int, seed: int) -> bytes:
    """A full-size synthetic roadwork scene, JPEG quality 90 (as the NATIX images roughly are)."""
    spec = SceneSpec(width, height, "sunny", "Light", "Urban", objects=("cone", "barrier", "sign"))
    buffer = io.BytesIO()
    Image.fromarray(render_scene(spec, np.random.default_rng(seed)).image).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def naive_views(data: bytes, boxes: np.ndarray, side: int) -> np.ndarray:
    image = Image.open(io.BytesIO(data)).convert("RGB")
    crops = [
        image.crop(tuple(int(v) for v in box)).resize((side, side), Image.Resampling.LANCZOS) for box in boxes
    ]
    return np.stack([np.asarray(c) for c in crops])


def median_ms(fn: Callable[[bytes], object], images: list[bytes]) -> float:
    fn(images[0])  # warm-up
    times = []
    for data in images:
        start = time.perf_counter()
        fn(data)
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def decode_rows(n_images: int, sides: list[int]) -> list[dict]:
    """Per-image milliseconds of each path, per image size and view side."""
    torch.set_num_threads(1)
    rows = []
    for name, (width, height) in SIZES.items():
        images = [jpeg(width, height, seed) for seed in range(n_images)]
        boxes = view_boxes(width, height, VIEWS)
        row = {"image": name, "jpeg_mb": round(np.mean([len(d) for d in images]) / 1e6, 2)}
        row["decode_ms"] = median_ms(lambda d: decode(d)[0].load(), images)
        for side in sides:
            row[f"naive_{side}_ms"] = median_ms(lambda d, s=side, b=boxes: naive_views(d, b, s), images)
            row[f"views_{side}_ms"] = median_ms(lambda d, s=side, b=boxes: load_views(d, b, s), images)
            with tempfile.TemporaryDirectory() as tmp:
                dataset = item_dataset(Path(tmp), images, (width, height), side)
                start = time.perf_counter()
                for i in range(len(dataset)):
                    dataset[i]
                row[f"item_{side}_ms"] = 1e3 * (time.perf_counter() - start) / len(dataset)
        rows.append(row)
    return rows


def extract_config(
    side: int,
    aug_copies: int,
    workers: int,
    batch_images: int = 8,
    compile: bool = False,
    device: str = "cpu",
) -> ExtractConfig:
    return ExtractConfig(
        side=side,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        aug_copies=aug_copies,
        seed=0,
        batch_images=batch_images,
        chunk_rows=32,
        shard_rows=128,
        workers=workers,
        device=device,
        splits=("train",),
        compile=compile,
    )


def item_dataset(root: Path, images: list[bytes], size: tuple[int, int], side: int) -> ViewDataset:
    """A `ViewDataset` over `images` written to one shard (train rows: one augmented copy each)."""
    index = write_shard(root, iter(images), len(images), size)
    boxes = {i: view_boxes(size[0], size[1], VIEWS) for i in index["image_id"]}
    jobs = index.with_columns(cache_row=pl.int_range(pl.len()), copies=pl.lit(2, dtype=pl.Int64))
    return ViewDataset(root, jobs, boxes, extract_config(side, aug_copies=1, workers=0))


def write_shard(root: Path, images, n: int, size: tuple[int, int]) -> pl.DataFrame:
    """Stream `n` JPEGs from the iterable `images` into one shard (100 per row group); index rows."""
    shard = "data/train-00000-of-00001.parquet"
    (root / "data").mkdir(parents=True, exist_ok=True)
    schema = pa.schema([("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())]))])
    with pq.ParquetWriter(root / shard, schema) as writer:
        batch = []
        for k, data in enumerate(images, start=1):
            batch.append({"bytes": data, "path": None})
            if len(batch) == 100 or k == n:
                writer.write_table(pa.table({"image": batch}, schema=schema))
                batch = []
    return pl.DataFrame(
        {
            "image_id": [f"img{i:06d}" for i in range(n)],
            "split": ["train"] * n,
            "shard": [shard] * n,
            "row": list(range(n)),
            "width": [size[0]] * n,
            "height": [size[1]] * n,
        }
    )


def noisy_frames(n: int):
    """n distinct noisy 1920x1080 JPEGs, made one at a time."""
    base = np.random.default_rng(0).integers(0, 256, (135, 240, 3), dtype=np.uint8)
    for i in range(n):
        buffer = io.BytesIO()
        image = Image.fromarray(np.roll(base, i, axis=1)).resize((1920, 1080), Image.Resampling.BILINEAR)
        image.save(buffer, "JPEG", quality=85)
        yield buffer.getvalue()


def run_stage(
    model: torch.nn.Module, root: Path, index: pl.DataFrame, config: ExtractConfig, cache: Path, dim: int
) -> dict[str, float]:
    """`extract_with_model` over the images of `index` (in `root`) into a new cache at `cache`."""
    features = FeatureCache.create(
        cache, copies=1 + config.aug_copies, views=12, dim=dim, chunk_rows=32, shard_rows=128, attrs={}
    )
    return extract_with_model(
        model=model,
        cache=features,
        jobs=plan_jobs(index, features, config),
        raw_root=root,
        boxes=boxes_by_image(build_plan(index, VIEWS)),
        config=config,
    )


def memory_child(n_images: int) -> dict:
    """The stage's extraction over n generated images; peak RSS (MB) of this process and its workers."""
    model = build_tiny(TINY)
    config = extract_config(112, aug_copies=0, workers=1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        index = write_shard(root, noisy_frames(n_images), n_images, (1920, 1080))
        counts = run_stage(model, root, index, config, root / "f.zarr", TINY.hidden_size)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"images": n_images, "peak_rss_mb": round(peak), "worker_peak_rss_mb": round(workers), **counts}


def stage_rows(args: argparse.Namespace) -> list[dict]:
    """The stage over `args.images` generated frames, twice (cold, warm) on fresh caches."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.full:
        from transformers import DINOv3ViTModel

        from bench.backbone import vith16plus

        with torch.device(device):
            model = DINOv3ViTModel(vith16plus()).to(torch.bfloat16 if device == "cuda" else torch.float32)
        dim = model.config.hidden_size
    else:
        model, dim = build_tiny(TINY), TINY.hidden_size
    model.eval()
    config = extract_config(args.side[0], 1, args.workers, args.batch_images, args.compile, device)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        index = write_shard(root, noisy_frames(args.images[0]), args.images[0], (1920, 1080))
        for run in ("cold", "warm"):
            counts = run_stage(model, root, index, config, root / f"{run}.zarr", dim)
            seconds = counts["seconds"]
            rows.append(
                {
                    "run": run,
                    "device": device,
                    "full": args.full,
                    "compile": args.compile,
                    "side": config.side,
                }
                | {"workers": args.workers, "batch_images": args.batch_images, **counts}
                | {"images_per_s": counts["images"] / seconds, "views_per_s": counts["views"] / seconds}
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", choices=["decode", "memory", "memory-child", "stage"])
    parser.add_argument("--images", type=int, nargs="+", default=[6])
    parser.add_argument("--side", type=int, nargs="+", default=[112, 512])
    parser.add_argument("--workers", type=int, default=1, help="stage: DataLoader workers")
    parser.add_argument("--batch-images", type=int, default=8, help="stage: images per forward")
    parser.add_argument("--full", action="store_true", help="stage: the full ViT-H+/16 (random weights)")
    parser.add_argument("--compile", action="store_true", help="stage: extract.compile")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    if args.what == "memory-child":
        print(json.dumps(memory_child(args.images[0])))
        return
    if args.what == "decode":
        rows = decode_rows(args.images[0], args.side)
    elif args.what == "stage":
        rows = stage_rows(args)
    else:
        rows = []
        for n in args.images:
            child = [sys.executable, "-m", "bench.extract", "memory-child", "--images", str(n)]
            done = subprocess.run(child, check=True, capture_output=True, text=True, cwd=ROOT)
            rows.append(json.loads(done.stdout))
    for row in rows:
        print("  ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
