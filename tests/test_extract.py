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
    assert 0 < len(jobs) <= 10 and counter.views == sum(12 * c for c in jobs["copies"].to_list())
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
    assert counter.views == 12 * (2 + 2 + 1)  # two train images with an augmented copy, one test image
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
