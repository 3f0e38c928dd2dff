"""DVC at NATIX scale: the caches at full size, the files DVC tracks, and a no-op `dvc repro` over them.

    python -m bench.cache_scale                          # NATIX size, shards of params.yaml's shard_rows
    python -m bench.cache_scale --shard-rows 32          # one chunk per file (the layout before shards)
    python -m bench.cache_scale --images 64 --dim 16     # tiny (the tests run this)

In a fresh git + DVC repository it writes, with the project's own cache classes and synthetic values
(random features: they compress like real ones; sparse masks), the three row caches a NATIX run keeps:
`features/backbone.zarr` (8,549 images, 12 views, 1 + 1 copies of the 6,251 training images, D = 1280),
`features/masks.zarr` (6 prompts) and `features/tta.zarr` (16 augmentations of the 2,298 test images).
Each is the persisted output of a stage in a `dvc.yaml` shaped like the project's (its stage depends on
the previous one), recorded with `dvc commit`. It then times `dvc repro` with nothing changed, and the
same for a one-stage pipeline with a one-file output: DVC's own floor.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from roadwork.config import load_params, section
from roadwork.features.cache import TOKENS, FeatureCache, RowCache
from roadwork.masks.cache import MaskCache
from roadwork.masks.config import MasksConfig
from roadwork.tta.augment import AugSpec
from roadwork.tta.extract import TOKENS as TTA_TOKENS
from roadwork.tta.extract import open_for_writing

VIEWS = 12
ENV = {
    "GIT_AUTHOR_NAME": "b",
    "GIT_AUTHOR_EMAIL": "b@b",
    "GIT_COMMITTER_NAME": "b",
    "GIT_COMMITTER_EMAIL": "b@b",
}


def fill(cache: RowCache, ids: list[str], make_rows) -> None:
    """Append `ids` and write their values shard by shard (as the stages do); `make_rows(rows, rng)`
    gives the values of those rows."""
    rows = cache.ensure_rows(ids)
    rng = np.random.default_rng(0)
    for start in range(0, len(rows), cache.shard_rows):
        block = rows[start : start + cache.shard_rows]
        cache.write(block, make_rows(block, rng))


def build_caches(root: Path, args: argparse.Namespace) -> None:
    """The three caches at the sizes of `args`, with chunk and shard rows of `args`."""
    ids = [f"{i:064x}" for i in range(args.images)]
    layout = {"chunk_rows": args.chunk_rows, "shard_rows": args.shard_rows}
    features = FeatureCache.create(
        root / "features/backbone.zarr", copies=2, views=VIEWS, dim=args.dim, attrs={}, **layout
    )
    fill(features, ids, lambda rows, rng: feature_rows(rows, rng, args))
    config = section(MasksConfig, {"masks": load_params()["masks"] | layout}, "masks")
    masks = MaskCache.create(root / "features/masks.zarr", config=config, views=VIEWS, attrs={})
    fill(masks, ids, lambda rows, rng: mask_rows(rows, rng, config))
    specs = tuple(AugSpec(scale=1.0 + k / 100) for k in range(args.tta_augs))
    tta = open_for_writing(root / "features/tta.zarr", specs, attrs={}, views=VIEWS, dim=args.dim, **layout)
    shape = (VIEWS, 3, args.dim)
    for cache in tta.values():  # the test images: those after the training ones
        fill(cache, ids[args.train :], lambda rows, rng: {TTA_TOKENS: normal(rng, len(rows), shape)})


def normal(rng: np.random.Generator, n: int, shape: tuple[int, ...]) -> np.ndarray:
    return rng.standard_normal((n, *shape), dtype=np.float32).astype(np.float16)


def feature_rows(rows: np.ndarray, rng: np.random.Generator, args: argparse.Namespace) -> dict:
    """Random tokens; training rows (the first `args.train`) have an augmented copy, the others zeros."""
    values = {t: normal(rng, len(rows), (2, VIEWS, args.dim)) for t in TOKENS}
    train = rows < args.train
    for t in TOKENS:
        values[t][~train, 1] = 0
    return values | {"copies": np.where(train, 2, 1).astype(np.int8)}


def mask_rows(rows: np.ndarray, rng: np.random.Generator, config: MasksConfig) -> dict:
    """Sparse masks: a fifth of the (image, prompt) pairs cover a block of the image and of view 0."""
    n, prompts, grid, view_grid = len(rows), len(config.prompts), config.image_grid, config.view_grid
    on = rng.random((n, prompts)) < 0.2
    image = np.zeros((n, prompts, grid, grid), np.float16)
    image[on, grid // 2 :, : grid // 4] = 1.0
    views = np.zeros((n, VIEWS, prompts, view_grid, view_grid), np.float16)
    views[:, 0] = image[:, :, :: grid // view_grid, :: grid // view_grid]
    coverage = views.mean(axis=(-2, -1), dtype=np.float32)
    return {"image_mask": image, "view_masks": views, "coverage": coverage}


def pipeline(caches: bool) -> dict:
    """A dvc.yaml shaped like the project's: each cache the persisted output of its stage."""
    if not caches:
        return {"stages": {"one": {"cmd": "echo one > one.txt", "outs": ["one.txt"]}}}
    stages, previous = {}, None
    for name in ("backbone", "masks", "tta"):
        stage = {"cmd": f"echo {name}", "outs": [{f"features/{name}.zarr": {"persist": True}}]}
        if previous:
            stage["deps"] = [f"features/{previous}.zarr"]
        stages[name], previous = stage, name
    return {"stages": stages}


def sh(cwd: Path, *args: str) -> str:
    env = {**os.environ, **ENV, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def noop_repro(root: Path, caches: bool, args: argparse.Namespace) -> dict:
    """Seconds of `dvc repro` with nothing changed (median of `args.repeats`), and what it tracks."""
    sh(root, "git", "init", "-q")
    sh(root, "dvc", "init", "-q")
    sh(root, "dvc", "config", "core.analytics", "false")
    (root / "dvc.yaml").write_text(yaml.safe_dump(pipeline(caches), sort_keys=False))
    started = time.perf_counter()
    if caches:
        build_caches(root, args)
        build = time.perf_counter() - started
        sh(root, "dvc", "commit", "-f", "-q")
    else:
        build = 0.0
        sh(root, "dvc", "repro", "-q")
    commit = time.perf_counter() - started - build
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        out = sh(root, "dvc", "repro")
        times.append(time.perf_counter() - start)
        if "Running stage" in out:
            raise RuntimeError(f"the no-op repro ran a stage:\n{out}")
    tracked = (
        {
            p.name: sum(len(files) for _, _, files in os.walk(p))
            for p in sorted((root / "features").glob("*.zarr"))
        }
        if caches
        else {"one.txt": 1}
    )
    size = sum(f.stat().st_size for f in (root / "features").rglob("*") if f.is_file()) if caches else 0
    return {
        "files": tracked,
        "files_total": sum(tracked.values()),
        "cache_gb": round(size / 1e9, 3),
        "build_s": round(build, 1),
        "commit_s": round(commit, 1),
        "noop_repro_s": [round(t, 2) for t in times],
        "noop_repro_median_s": round(statistics.median(times), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    shard_rows = load_params()["extract"]["shard_rows"]
    parser.add_argument("--images", type=int, default=8549, help="images (NATIX: 8,549)")
    parser.add_argument("--train", type=int, default=6251, help="training images, with an augmented copy")
    parser.add_argument("--dim", type=int, default=1280, help="backbone width (ViT-H+: 1280)")
    parser.add_argument("--tta-augs", type=int, default=16, help="TTA augmentations of the test images")
    parser.add_argument("--chunk-rows", type=int, default=32)
    parser.add_argument("--shard-rows", type=int, default=shard_rows)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.train >= args.images:
        parser.error("--train must be below --images (the rest are the test images TTA augments)")
    results = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "dvc": sh(Path.cwd(), "dvc", "--version").strip(),
        "args": vars(args) | {"json": None},
    }
    for name, caches in (("dvc_floor", False), ("caches", True)):
        root = Path(tempfile.mkdtemp(prefix=f"cache-scale-{name}-"))
        try:
            results[name] = noop_repro(root, caches, args)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        print(name, json.dumps(results[name]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
