"""`extract`: features against a direct forward, kill-and-resume (SIGKILL), incremental, removed images."""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import zarr

from roadwork.data.images import ShardReader
from roadwork.features import extract
from roadwork.features.backbone import build_tiny, pooled_tokens
from roadwork.features.cache import FeatureCache
from roadwork.features.extract import embed_views, pooled_views
from roadwork.views.crops import load_views
from roadwork.views.plan import boxes_by_image, build_plan
from tests import extract_job as job

ROOT = Path(__file__).resolve().parents[1]
SHARD0, SHARD1 = "data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet"


class Counter:
    """Counts the views that go through the backbone (a forward pre-hook)."""

    def __init__(self, model: torch.nn.Module):
        self.views = 0
        model.register_forward_pre_hook(self.count, with_kwargs=True)

    def count(self, module, args, kwargs) -> None:
        self.views += kwargs["pixel_values"].shape[0]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, pl.DataFrame]:
    root = tmp_path_factory.mktemp("raw")
    return root, job.write_images(root, SHARD0, 0, 10)


def backbone_views(root: Path, index: pl.DataFrame, jobs: pl.DataFrame) -> int:
    """Views a run over `jobs` sends through the backbone: each image's distinct ones (np.unique is the
    reference). A portrait image's centre and right boxes are one crop; an augmented copy that no
    transform touched repeats too."""
    data = extract.ViewDataset(root, jobs, boxes_by_image(build_plan(index, job.VIEWS)), job.CONFIG)
    items = (data[i][1].flatten(0, 1).flatten(1).numpy() for i in range(len(data)))
    return sum(len(np.unique(item, axis=0)) for item in items)


def read_all(cache, ids: list[str]) -> dict[str, np.ndarray]:
    features, copies = cache.read(ids, ["cls", "patch_mean", "patch_max"])
    return {"features": features, "copies": copies}


def test_features_equal_a_direct_forward_of_the_views(data, tmp_path):
    root, index = data
    model = build_tiny(job.TINY)
    cache, _ = job.run(root, index, tmp_path / "f.zarr", model)
    features, copies = cache.read(index["image_id"].to_list(), ["cls", "patch_mean", "patch_max"])
    assert features.shape == (10, 2, 12, 3 * 32) and features.dtype == np.float16
    assert copies.tolist() == [2] * 9 + [1]  # augmented copy for train rows only
    row = index.row(4, named=True)
    views = load_views(
        ShardReader(root).read(SHARD0, row["row"]),
        boxes_by_image(build_plan(index, job.VIEWS))[row["image_id"]],
        job.CONFIG.side,
        size=(row["width"], row["height"]),
    )
    expected = embed_views(model, views, job.CONFIG)  # [12, 3, D]
    np.testing.assert_array_equal(features[4, 0], expected.reshape(12, -1).astype(np.float16))
    mean, std = (torch.tensor(v)[:, None, None] for v in (job.CONFIG.mean, job.CONFIG.std))
    with torch.inference_mode():  # an independent reference: normalise by hand, run the model
        pixels = (torch.from_numpy(views).permute(0, 3, 1, 2).float() / 255 - mean) / std
        reference = pooled_tokens(model, pixels).reshape(12, -1).numpy()
    np.testing.assert_allclose(features[4, 0].astype(np.float32), reference, rtol=1e-2, atol=1e-2)
    assert not np.array_equal(features[4, 1], features[4, 0])  # the augmented copy differs


def test_distinct_views_keeps_first_occurrences_and_maps_every_view_back():
    rng = np.random.default_rng(0)
    views = torch.from_numpy(rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8))
    near = views[1].clone()
    near[-1, -1, -1] ^= 1  # the last byte lies outside the sampled key: only the full comparison tells
    batch = torch.stack([views[0], views[1], views[0], near, views[2], views[0], views[1]])
    unique, inverse = extract.distinct_views(batch)
    assert inverse.tolist() == [0, 1, 0, 2, 3, 0, 1]
    assert torch.equal(unique, batch[[0, 1, 3, 4]]) and torch.equal(unique[inverse], batch)
    same, identity = extract.distinct_views(views)
    assert same is views and identity.tolist() == [0, 1, 2, 3, 4]


def test_a_repeated_view_goes_through_the_backbone_once():
    """A square image's global, centre and right views are one crop: embedded once, given to all three,
    with the values of embedding every view."""
    model = build_tiny(job.TINY)
    views = np.random.default_rng(1).integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    views[10] = views[11] = views[0]
    counter = Counter(model)
    got = embed_views(model, views, job.CONFIG)
    assert counter.views == 10
    np.testing.assert_allclose(got, pooled_views(model, views, job.CONFIG).numpy(), rtol=1e-5, atol=1e-5)
    assert np.array_equal(got[10], got[0]) and np.array_equal(got[11], got[0])


def test_extract_embeds_a_square_images_repeated_views_once(tmp_path):
    """224 px square images (validator-sized): 10 distinct views of 12 reach the backbone, and every
    slot holds its own view's features."""
    index = job.write_images(tmp_path, SHARD0, 0, 4, sizes=((224, 224),))
    index = index.with_columns(split=pl.lit("test"))  # clean copies only: augmentation is per view
    model = build_tiny(job.TINY)
    counter = Counter(model)
    cache, _ = job.run(tmp_path, index, tmp_path / "f.zarr", model)
    boxes = boxes_by_image(build_plan(index, job.VIEWS))
    views = np.stack(
        [
            load_views(ShardReader(tmp_path).read(SHARD0, r["row"]), boxes[r["image_id"]], job.CONFIG.side)
            for r in index.iter_rows(named=True)
        ]
    )  # [4 images, 12, side, side, 3]
    assert counter.views == 4 * 10 == len(np.unique(views.reshape(48, -1), axis=0))
    features, _ = cache.read(index["image_id"].to_list(), ["cls", "patch_mean", "patch_max"])
    want = embed_views(model, views.reshape(-1, *views.shape[2:]), job.CONFIG).reshape(4, 12, -1)
    np.testing.assert_array_equal(features[:, 0], want.astype(np.float16))
    np.testing.assert_array_equal(features[:, 0, 10:], features[:, 0, [0, 0]])


# Kill points: before any write, mid-run, while appending rows (between resizes; after the done flags of
# the new rows, before their ids), between a shard's values and its done flags, half-way through a shard.
# Writes: 2 to append the rows, then per shard of 4 rows cls, patch_mean, patch_max, copies and done.
KILLS = [
    ("forward", 1),
    ("forward", 4),
    ("resize", 3),
    ("write", 2),
    ("write", 7),
    ("write", 10),
]


@pytest.mark.parametrize(("point", "k"), KILLS)
def test_a_sigkilled_run_resumes_to_the_uninterrupted_cache(data, tmp_path, point, k):
    root, index = data
    index_file = tmp_path / "index.parquet"
    index.write_parquet(index_file)
    cache_path = tmp_path / "killed.zarr"
    args = [str(root), str(index_file), str(cache_path), point, str(k)]
    done = subprocess.run([sys.executable, "-m", "tests.extract_job", *args], cwd=ROOT, capture_output=True)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]
    assert cache_path.exists()
    model = build_tiny(job.TINY)
    counter = Counter(model)
    resumed, jobs = job.run(root, index, cache_path, model)
    assert 0 < len(jobs) <= 10 and counter.views == backbone_views(root, index, jobs)
    fresh, _ = job.run(root, index, tmp_path / "fresh.zarr", build_tiny(job.TINY))
    ids = index["image_id"].to_list()
    for name, value in read_all(fresh, ids).items():
        np.testing.assert_array_equal(read_all(resumed, ids)[name], value)
    assert len(resumed.row_of) == 10 and resumed.group["image_id"].shape == (10,)


def test_new_shards_extract_only_new_images_and_removed_ones_are_never_read(data, tmp_path):
    root, index = data
    path = tmp_path / "f.zarr"
    cache, _ = job.run(root, index, path, build_tiny(job.TINY))
    before = read_all(cache, index["image_id"].to_list())
    model = build_tiny(job.TINY)
    counter = Counter(model)
    more = pl.concat([index, job.write_images(root, SHARD1, 10, 3)])
    cache, jobs = job.run(root, more, path, model)
    assert jobs["image_id"].to_list() == ["img010", "img011", "img012"]
    # Two train images with an augmented copy and one test image: 60 views, one of them a repeat.
    assert counter.views == backbone_views(root, more, jobs) == 12 * (2 + 2 + 1) - 1
    np.testing.assert_array_equal(
        read_all(cache, index["image_id"].to_list())["features"], before["features"]
    )
    # Images removed from the index: nothing is extracted, and readers (which ask by image id) get
    # exactly the remaining images' features, never a removed one's row.
    kept = more.filter(~pl.col("image_id").is_in(["img002", "img011"]))
    model = build_tiny(job.TINY)
    counter = Counter(model)
    cache, jobs = job.run(root, kept, path, model)
    assert len(jobs) == 0 and counter.views == 0
    features = read_all(cache, kept["image_id"].to_list())["features"]
    full = read_all(cache, more["image_id"].to_list())["features"]
    keep_rows = [i for i, name in enumerate(more["image_id"]) if name not in ("img002", "img011")]
    np.testing.assert_array_equal(features, full[keep_rows])


def test_two_processes_under_torchrun_build_the_cache_of_one(data, tmp_path):
    root, index = data
    index_file = tmp_path / "index.parquet"
    index.write_parquet(index_file)
    path = tmp_path / "two.zarr"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    args = [str(root), str(index_file), str(path), "none", "0"]
    done = subprocess.run(
        [*torchrun, "-m", "tests.extract_job", *args], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # Ranks own whole shards of 4 rows: rank 0 shards 0 and 2, rank 1 shard 1.
    assert "rank 0/2: rows [0, 1, 2, 3, 8, 9]" in done.stdout and "rank 1/2: rows [4, 5, 6, 7]" in done.stdout
    two = FeatureCache(path, zarr.open_group(path, mode="r"))
    one, _ = job.run(root, index, tmp_path / "one.zarr", build_tiny(job.TINY))
    ids = index["image_id"].to_list()
    for name, value in read_all(one, ids).items():
        np.testing.assert_array_equal(read_all(two, ids)[name], value)


def test_compiled_backbone_sees_one_batch_shape_and_matches_eager(monkeypatch):
    """`extract.compile`: fixed-size batches (the last padded), so the graph compiles once; same values.
    Dynamo's eager backend traces the real graph without generating code (fast on a CPU)."""
    model = build_tiny(job.TINY)
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda module, **kw: compile_(module, backend="eager", **kw))
    monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)
    torch._dynamo.reset()
    sizes = []

    def recording(model, views, config):
        sizes.append(len(views))
        return pooled_views(model, views, config)

    monkeypatch.setattr(extract, "pooled_views", recording)
    views = np.random.default_rng(0).integers(0, 256, (19, 32, 32, 3), dtype=np.uint8)
    embed = extract.view_embedder(model, dataclasses.replace(job.CONFIG, compile=True), batch_views=8)
    got = torch.cat([embed(views), embed(views[:5])]).numpy()
    assert sizes == [8, 8, 8, 8] and got.shape == (24, 3, job.TINY.hidden_size)
    want = embed_views(model, np.concatenate([views, views[:5]]), job.CONFIG)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    torch._dynamo.reset()
