"""Ground-truth masks of the synthetic data: the side table, rasterising, the cache they fill."""

from __future__ import annotations

import dataclasses

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from roadwork.data.schema import TRUTH_FILE
from roadwork.masks.cache import RASTER_PER_CELL, MaskCache, expected_attrs, source_manifest
from roadwork.masks.fill import plan_jobs
from roadwork.masks.truth import PROMPT_KINDS, fill_truth_masks, rasterise, read_truth
from roadwork.synth.dataset import generate, write_dataset
from tests.test_masks import CONFIG
from tests.test_synth import TINY

TRUTH = dataclasses.replace(CONFIG, source="truth", image_grid=8, view_grid=4)
HALF = [{"kind": "cone", "polygons": [[[0, 0], [100, 0], [100, 100], [0, 100]]]}]  # left half of 200x100


def test_rasterise_fills_the_kinds_polygons_in_the_stretched_square():
    masks = rasterise(HALF, (200, 100), ("traffic cone", "road work sign"), 16)
    assert masks.shape == (2, 16, 16)
    assert masks[0, :, :8].min() == 1 and masks[0, :, 8:].max() == 0  # x scaled by 16/200, y by 16/100
    assert masks[1].max() == 0  # no sign drawn
    assert rasterise(HALF, (200, 100), ("construction equipment",), 16).max() == 0  # answered by no kind


def test_truth_fills_the_cache_grids(tmp_path):
    index = pl.DataFrame(
        {
            "image_id": ["a", "b"],
            "split": ["train", "train"],
            "shard": ["data/train-00000-of-00001.parquet"] * 2,
            "row": [0, 1],
            "width": [200, 200],
            "height": [100, 100],
        }
    )
    truth = {(index["shard"][0], 0): HALF, (index["shard"][0], 1): []}
    boxes = {i: np.array([[0, 0, 100, 100], [100, 0, 200, 100], [50, 0, 150, 100]]) for i in ("a", "b")}
    attrs = {"source": "truth"}
    cache = MaskCache.create(tmp_path / "m.zarr", config=TRUTH, views=3, attrs=attrs)
    counts = fill_truth_masks(
        cache=cache, jobs=plan_jobs(index, cache, TRUTH), truth=truth, boxes=boxes, config=TRUTH
    )
    assert counts["images"] == 2 and counts["coverage/traffic cone"] == pytest.approx(0.25)  # (0.5 + 0) / 2
    got = cache.read(["a", "b"])
    cone = TRUTH.prompts.index("traffic cone")
    np.testing.assert_allclose(got["coverage"][0, :, cone], [1.0, 0.0, 0.5])
    np.testing.assert_allclose(got["image_mask"][0, cone].mean(axis=0), [1, 1, 1, 1, 0, 0, 0, 0])
    assert got["view_masks"][1].max() == 0 and got["coverage"][:, :, 1:].max() == 0
    with pytest.raises(KeyError, match=r"image a \(data/train-00000-of-00001.parquet row 0\)"):
        missing = MaskCache.create(tmp_path / "n.zarr", config=TRUTH, views=3, attrs=attrs)
        fill_truth_masks(
            cache=missing, jobs=plan_jobs(index, missing, TRUTH), truth={}, boxes=boxes, config=TRUTH
        )


def test_synth_writes_the_objects_of_every_row(tmp_path):
    shards = write_dataset(TINY, tmp_path)
    truth = read_truth(tmp_path / TRUTH_FILE)
    data = generate(TINY)
    n_rows = 0
    for files in shards.values():
        for f in files:
            table = pq.read_table(f)
            rows = table.to_pylist()
            n_rows += len(rows)
            assert "objects" not in table.column_names  # the shards keep the NATIX schema
            for i, row in enumerate(rows):
                objects = truth[(f"data/{f.name}", i)]
                assert {o["kind"] for o in objects} <= set(PROMPT_KINDS.values())
                if row["label"] == 0:
                    assert objects == []
    assert n_rows == len(truth) == sum(len(rows) for rows in data.values())
    drawn = [o for rows in data.values() for r in rows for o in r.objects]
    stored = [o for objects in truth.values() for o in objects]
    assert len(stored) == len(drawn) and all(len(o["polygons"]) for o in stored)


def test_truth_source_is_refused_without_a_table_and_fingerprints_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="only the synthetic data"):
        source_manifest(TRUTH, sam_dir=tmp_path / "sam", raw_root=tmp_path)
    with pytest.raises(ValueError, match=r"masks\.source"):
        dataclasses.replace(TRUTH, source="gt")
    table = tmp_path / TRUTH_FILE
    table.write_bytes(b"x")
    first = source_manifest(TRUTH, sam_dir=tmp_path / "sam", raw_root=tmp_path)
    assert first["input_size"] == [RASTER_PER_CELL * TRUTH.image_grid] * 2
    table.write_bytes(b"y")
    assert (
        source_manifest(TRUTH, sam_dir=tmp_path / "sam", raw_root=tmp_path)["fingerprint"]
        != first["fingerprint"]
    )
    plan_meta = {"rule_fingerprint": "r"}
    assert expected_attrs(TRUTH, sam=first, plan_meta=plan_meta)["sam_fingerprint"].startswith("truth:")
