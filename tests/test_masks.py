"""The mask cache: grids over the image and its views, filled from parquet shards, resumable, incremental,
refusing stale readers."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from PIL import Image

from roadwork.data.images import ShardReader
from roadwork.features.cache import StaleCacheError
from roadwork.masks.cache import (
    MaskCache,
    area_weights,
    expected_attrs,
    grid_fractions,
    mask_grids,
)
from roadwork.masks.fill import fill_masks, load_image, pixel_values, plan_jobs
from roadwork.masks.sam import (
    encode_prompts,
    load_sam,
    materialise,
    predict_masks,
)
from roadwork.views.plan import ViewsConfig, boxes_by_image, build_plan, rule_fingerprint, view_boxes
from tests.natix_fixture import scene_shard
from tests.test_sam import CONFIG as SAM_CONFIG

VIEWS = ViewsConfig(grid=3, overlap=0.25)
CONFIG = SAM_CONFIG  # the tiny SAM 3 of the SAM tests, three prompts, 8x8 image / 4x4 view grids


@pytest.fixture(scope="module")
def sam(tmp_path_factory):
    directory = tmp_path_factory.mktemp("sam")
    manifest = materialise(CONFIG.model, CONFIG.tiny, directory)
    model, processor = load_sam(directory)
    return manifest, model, processor


class _Counting:
    """Counts images through the image encoder; raises once `fail_after` encoder calls have run."""

    def __init__(self, model, fail_after: int | None = None):
        self.model, self.fail_after, self.calls, self.images = model, fail_after, 0, 0
        self.original = model.get_vision_features

    def __call__(self, pixel_values, **kwargs):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise RuntimeError("killed")
        self.calls += 1
        self.images += pixel_values.shape[0]
        return self.original(pixel_values=pixel_values, **kwargs)


def _run(sam, root: Path, index: pl.DataFrame, path: Path, fail_after: int | None = None):
    """One `masks` stage run over `index` into `path`; returns (cache, jobs, counter)."""
    manifest, model, processor = sam
    plan = build_plan(index, VIEWS)
    plan_meta = {"rule_fingerprint": rule_fingerprint(VIEWS), "n_views": 12}
    attrs = expected_attrs(CONFIG, sam=manifest, plan_meta=plan_meta)
    cache = MaskCache.create(path, config=CONFIG, views=12, attrs=attrs)
    jobs = plan_jobs(index, cache, CONFIG)
    counter = _Counting(model, fail_after)
    model.get_vision_features = counter
    try:
        fill_masks(
            model=model,
            processor=processor,
            cache=cache,
            jobs=jobs,
            raw_root=root,
            boxes=boxes_by_image(plan),
            config=CONFIG,
        )
    finally:
        del model.get_vision_features  # back to the class method
    return cache, jobs, counter


def test_cache_holds_the_masks_of_each_image(tmp_path, sam):
    index = scene_shard(tmp_path, "data/train-00000-of-00001.parquet", 0, 5)
    cache, jobs, counter = _run(sam, tmp_path, index, tmp_path / "masks.zarr")
    assert counter.images == 5 and counter.calls == 3  # batches of 2: every image encoded once
    values = cache.read(index["image_id"].to_list())
    assert values["image_mask"].shape == (5, 3, 8, 8) and values["image_mask"].dtype == np.float16
    assert values["view_masks"].shape == (5, 12, 3, 4, 4) and values["coverage"].shape == (5, 12, 3)
    assert 0 < values["coverage"].mean() < 1
    np.testing.assert_allclose(
        values["coverage"], values["view_masks"].astype(np.float32).mean((-2, -1)), atol=1e-3
    )
    # View 0 is the whole image: its 4 x 4 grid is the 8 x 8 image mask averaged over 2 x 2 blocks.
    blocks = values["image_mask"].astype(np.float32).reshape(5, 3, 4, 2, 4, 2).mean((3, 5))
    np.testing.assert_allclose(values["view_masks"][:, 0], blocks, atol=2e-3)
    # One image recomputed by hand: decode, preprocess, mask, reduce.
    _, model, processor = sam
    job = jobs.row(3, named=True)
    data = ShardReader(tmp_path).read(job["shard"], job["row"])
    image = load_image(data, (job["width"], job["height"]), (56, 56))
    masks = predict_masks(
        model,
        processor,
        pixel_values(processor, [image], model),
        encode_prompts(model, processor, CONFIG.prompts),
        CONFIG,
    )[0]
    boxes = boxes_by_image(build_plan(index, VIEWS))[job["image_id"]]
    expected = mask_grids(masks, boxes, (job["width"], job["height"]), 8, 4)
    for name, value in expected.items():
        np.testing.assert_array_equal(cache.read([job["image_id"]])[name][0], value)


def test_killed_run_resumes_and_new_images_are_incremental(tmp_path, sam):
    index = scene_shard(tmp_path, "data/train-00000-of-00002.parquet", 0, 10)
    path = tmp_path / "masks.zarr"
    with pytest.raises(RuntimeError, match="killed"):
        _run(sam, tmp_path, index, path, fail_after=3)  # 3 batches of 2: chunk 0 (rows 0-3) written
    cache, jobs, counter = _run(sam, tmp_path, index, path)
    assert jobs["cache_row"].to_list() == list(range(4, 10))  # rows 4 and 5 were computed, never written
    assert counter.images == 6
    fresh, _, _ = _run(sam, tmp_path, index, tmp_path / "uninterrupted.zarr")
    ids = index["image_id"].to_list()
    for name, value in fresh.read(ids).items():
        np.testing.assert_array_equal(cache.read(ids)[name], value)
    # Nothing left to do: no image is encoded.
    assert _run(sam, tmp_path, index, path)[2].images == 0
    # New images: only they are computed; the rows already there keep their place and values.
    more = pl.concat([index, scene_shard(tmp_path, "data/train-00001-of-00002.parquet", 10, 3)])
    cache, jobs, counter = _run(sam, tmp_path, more, path)
    assert counter.images == 3 and jobs["cache_row"].to_list() == [10, 11, 12]
    np.testing.assert_array_equal(cache.read(ids)["view_masks"], fresh.read(ids)["view_masks"])
    assert cache.done_mask(np.arange(13)).all()


def test_reader_refuses_a_cache_of_another_model(tmp_path, sam):
    index = scene_shard(tmp_path, "data/train-00000-of-00001.parquet", 0, 2)
    path = tmp_path / "masks.zarr"
    _run(sam, tmp_path, index, path)
    manifest = sam[0]
    plan_meta = {"rule_fingerprint": rule_fingerprint(VIEWS), "n_views": 12}

    def open_masks(config, sam, meta):
        return MaskCache.open_checked(path, expected_attrs(config, sam=sam, plan_meta=meta))

    assert len(open_masks(CONFIG, manifest, plan_meta).row_of) == 2
    with pytest.raises(StaleCacheError, match=r"sam_fingerprint: cache has '.*', config wants 'other'"):
        open_masks(CONFIG, {**manifest, "fingerprint": "other"}, plan_meta)
    with pytest.raises(StaleCacheError, match=r"prompts"):
        open_masks(dataclasses.replace(CONFIG, prompts=("cone",)), manifest, plan_meta)
    with pytest.raises(StaleCacheError, match=r"view_rule_fingerprint"):
        open_masks(CONFIG, manifest, {**plan_meta, "rule_fingerprint": "x"})


def test_load_image_stretches_the_whole_image_and_checks_its_size():
    pixels = np.zeros((300, 400, 3), dtype=np.uint8)
    pixels[:, :200] = (255, 0, 0)
    pixels[:, 200:] = (0, 0, 255)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=95)
    image = load_image(buffer.getvalue(), (400, 300), (32, 48))  # decoded at 1/8 (50 x 38), then resized
    assert image.shape == (32, 48, 3)
    left, right = image[:, :23].astype(int), image[:, 25:].astype(int)
    assert (left[..., 0] > 200).all() and (left[..., 2] < 60).all()
    assert (right[..., 2] > 200).all() and (right[..., 0] < 60).all()
    with pytest.raises(ValueError, match="planned size of 300x400"):
        load_image(buffer.getvalue(), (300, 400), (32, 48))


def test_failed_image_names_its_shard_and_row(tmp_path, sam):
    index = scene_shard(tmp_path, "data/train-00000-of-00001.parquet", 0, 2)
    index = index.with_columns(width=pl.when(pl.col("row") == 1).then(999).otherwise(pl.col("width")))
    with pytest.raises(ValueError, match=r"img001 \(data/train-00000-of-00001.parquet row 1\)"):
        _run(sam, tmp_path, index, tmp_path / "masks.zarr")


def test_device_and_dtype_follow_the_model(sam):
    _, model, processor = sam
    pixels = pixel_values(processor, [np.zeros((56, 56, 3), dtype=np.uint8)], model)
    assert pixels.shape == (1, 3, 56, 56) and pixels.dtype == torch.float32
    np.testing.assert_allclose(pixels.numpy(), -1.0)  # SAM 3 normalises with mean 0.5, std 0.5


def test_area_weights_known_values():
    np.testing.assert_allclose(area_weights(1, 3, 4, 2, 2), [[1, 0], [0, 1]])
    np.testing.assert_allclose(area_weights(0.5, 2.5, 4, 4, 1), [[0.25, 0.5, 0.25, 0]])
    weights = area_weights(3, 97, 100, 7, 5)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0)
    with pytest.raises(ValueError, match="outside"):
        area_weights(0, 5, 4, 2, 2)


def _reference_grid(full: np.ndarray, box: np.ndarray, cells: int) -> np.ndarray:
    """Crop the full-resolution mask to the box, then area-average into cells x cells (exactly: every
    pixel is split into cells x cells sub-pixels, so each cell holds whole sub-pixels)."""
    x0, y0, x1, y1 = box.tolist()
    crop = full[y0:y1, x0:x1].astype(np.float64)
    fine = np.repeat(np.repeat(crop, cells, axis=0), cells, axis=1)
    h, w = crop.shape
    return fine.reshape(cells, h, cells, w).mean(axis=(1, 3))


@pytest.mark.parametrize("shape", ["rectangle", "random"])
def test_view_grids_equal_cropping_the_full_resolution_mask(shape):
    width, height, mask_side, cells = 240, 160, 40, 4  # a mask pixel covers 6 x 4 image pixels
    masks = np.zeros((2, mask_side, mask_side), dtype=bool)
    if shape == "rectangle":
        masks[0, 10:25, 10:25] = True  # image pixels x in [60, 150), y in [40, 100)
    else:
        masks[0] = np.random.default_rng(0).random((mask_side, mask_side)) < 0.3
    masks[1, :, 30:] = True  # a second prompt: the right quarter
    # The mask seen at full resolution: each mask pixel stretched over its 6 x 4 image pixels.
    full = np.repeat(np.repeat(masks, height // mask_side, axis=1), width // mask_side, axis=2)
    if shape == "rectangle":
        assert full[0].sum() == 90 * 60 and full[0, 40:100, 60:150].all()
    boxes = view_boxes(width, height, ViewsConfig(grid=3, overlap=0.25))
    grids = grid_fractions(torch.from_numpy(masks), boxes, (width, height), cells).numpy()
    values = mask_grids(torch.from_numpy(masks), boxes, (width, height), image_grid=8, view_grid=cells)
    for p in range(2):
        for v, box in enumerate(boxes):
            reference = _reference_grid(full[p], box, cells)
            np.testing.assert_allclose(grids[v, p], reference, atol=1e-6)
            np.testing.assert_allclose(values["view_masks"][v, p], reference, atol=1e-3)  # float16
            x0, y0, x1, y1 = box.tolist()
            assert values["coverage"][v, p] == pytest.approx(full[p, y0:y1, x0:x1].mean(), abs=1e-6)
        whole = _reference_grid(full[p], np.array([0, 0, width, height]), 8)
        np.testing.assert_allclose(values["image_mask"][p], whole, atol=1e-3)
    assert values["image_mask"].dtype == values["view_masks"].dtype == np.float16
    assert values["view_masks"].shape == (len(boxes), 2, cells, cells)
