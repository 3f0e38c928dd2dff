import numpy as np
import pytest
import zarr

from roadwork.features.cache import FeatureCache, StaleCacheError, read_rows, row_runs

ATTRS = {"backbone_fingerprint": "abc", "plan_fingerprint": "def", "side": 32}


def make(path, attrs=ATTRS, chunk_rows=2, shard_rows=4):
    return FeatureCache.create(
        path, copies=2, views=3, dim=5, chunk_rows=chunk_rows, shard_rows=shard_rows, attrs=attrs
    )


def features(n, seed=0):
    return np.random.default_rng(seed).normal(size=(n, 2, 3, 3, 5)).astype(np.float32)


def write_features(cache, rows, feats, copies):
    """`feats` [n, C, V, 3, D] through the writers' path: `row_values` of each row's valid copies (the
    rest stay zero), then one `write`."""
    values = [cache.row_values(f[:c]) for f, c in zip(feats, copies, strict=True)]
    cache.write(np.asarray(rows), {k: np.stack([v[k] for v in values]) for k in values[0]})


def test_write_read_round_trip(tmp_path):
    cache = make(tmp_path / "c.zarr")
    ids = [f"img{i}" for i in range(6)]
    rows = cache.ensure_rows(ids)
    assert rows.tolist() == list(range(6))
    feats = features(6)
    copies = np.array([2, 2, 1, 1, 2, 1])
    write_features(cache, rows, feats, copies)
    feats[copies == 1, 1] = 0  # a row's copies beyond its valid ones are stored as zeros
    reopened = FeatureCache.open_checked(tmp_path / "c.zarr", ATTRS)
    order = ["img3", "img0", "img5"]
    got, copies = reopened.read(order, ["cls", "patch_max"])
    want = np.concatenate([feats[[3, 0, 5], :, :, 0], feats[[3, 0, 5], :, :, 2]], axis=-1)
    np.testing.assert_allclose(got, want.astype(np.float16))
    assert got.dtype == np.float16 and got.shape == (3, 2, 3, 10)
    assert copies.tolist() == [1, 2, 1]
    only_global, _ = reopened.read(order, ["patch_mean"], views=[0])
    assert only_global.shape == (3, 2, 1, 5)


def test_read_rows_matches_numpy_indexing(tmp_path):
    array = zarr.create_array(tmp_path / "a.zarr", shape=(23, 2, 3), chunks=(4, 2, 3), dtype="float32")
    values = np.random.default_rng(0).normal(size=array.shape).astype(np.float32)
    array[:] = values
    # out of order, repeated, chunks skipped (8-11), the last partial chunk, one row
    for rows in ([22, 0, 5, 5, 13, 1, 21], [7], list(range(23))[::-1]):
        np.testing.assert_array_equal(read_rows(array, np.array(rows)), values[rows])
    assert read_rows(array, np.zeros(0, dtype=np.int64)).shape == (0, 2, 3)


def test_incremental_rows_keep_their_place(tmp_path):
    cache = make(tmp_path / "c.zarr")
    cache.ensure_rows(["a", "b"])
    rows = cache.ensure_rows(["c", "a", "d"])
    assert rows.tolist() == [2, 0, 3]
    assert FeatureCache.create(
        tmp_path / "c.zarr", copies=2, views=3, dim=5, chunk_rows=4, shard_rows=4, attrs=ATTRS
    ).row_of == {"a": 0, "b": 1, "c": 2, "d": 3}


def test_unfinished_rows_are_refused(tmp_path):
    cache = make(tmp_path / "c.zarr")
    rows = cache.ensure_rows(["a", "b"])
    write_features(cache, rows[:1], features(1), np.array([1]))
    assert cache.done_mask(rows).tolist() == [True, False]
    with pytest.raises(StaleCacheError, match=r"1 row\(s\) unfinished"):
        cache.read(["a", "b"], ["cls"])
    with pytest.raises(StaleCacheError, match=r"not extracted, e.g. zz"):
        cache.read(["zz"], ["cls"])


def test_stale_attrs_refused_and_named(tmp_path):
    make(tmp_path / "c.zarr")
    with pytest.raises(StaleCacheError, match=r"backbone_fingerprint: cache has 'abc', config wants 'xyz'"):
        FeatureCache.open_checked(tmp_path / "c.zarr", {**ATTRS, "backbone_fingerprint": "xyz"})
    with pytest.raises(FileNotFoundError, match=r"no feature cache; run `dvc repro`"):
        FeatureCache.open_checked(tmp_path / "missing.zarr", ATTRS)


def test_writer_with_new_attrs_starts_over(tmp_path):
    cache = make(tmp_path / "c.zarr")
    write_features(cache, cache.ensure_rows(["a"]), features(1), np.array([2]))
    rebuilt = make(tmp_path / "c.zarr", attrs={**ATTRS, "side": 64})
    assert rebuilt.row_of == {}
    kept = make(tmp_path / "c.zarr", attrs={**ATTRS, "side": 64})
    assert kept.row_of == {}
    write_features(kept, kept.ensure_rows(["b"]), features(1), np.array([1]))
    assert make(tmp_path / "c.zarr", attrs={**ATTRS, "side": 64}).row_of == {"b": 0}


def test_unknown_token(tmp_path):
    cache = make(tmp_path / "c.zarr")
    write_features(cache, cache.ensure_rows(["a"]), features(1), np.array([1]))
    with pytest.raises(ValueError, match=r"unknown token"):
        cache.read(["a"], ["max"])


def test_one_file_per_array_and_shard_and_scattered_rows_written_in_runs(tmp_path):
    cache = make(tmp_path / "c.zarr")  # chunks of 2 rows in shards of 4
    ids = [f"img{i}" for i in range(10)]
    rows = cache.ensure_rows(ids)
    feats = features(10)
    scattered = np.array([9, 0, 1, 5, 3])  # runs [0, 1], [3], [5], [9], given out of order
    write_features(cache, scattered, feats[scattered], np.full(5, 2))
    assert np.flatnonzero(cache.done_mask(rows)).tolist() == [0, 1, 3, 5, 9]
    rest = np.setdiff1d(rows, scattered)
    write_features(cache, rest, feats[rest], np.full(5, 2))
    got, _ = FeatureCache.open_checked(tmp_path / "c.zarr", ATTRS).read(ids, ["cls"])
    np.testing.assert_array_equal(got, feats[:, :, :, 0].astype(np.float16))
    for name in ("cls", "patch_mean", "patch_max", "copies", "done", "image_id"):
        files = sorted(p.name for p in (tmp_path / "c.zarr" / name / "c").iterdir())
        assert files == ["0", "1", "2"], name  # 10 rows in shards of 4: 3 files, not 5 chunks


def test_shard_rows_must_be_a_multiple_of_chunk_rows(tmp_path):
    with pytest.raises(ValueError, match="shard_rows=6 must be a positive multiple of chunk_rows=4"):
        make(tmp_path / "c.zarr", chunk_rows=4, shard_rows=6)


def test_row_runs():
    assert row_runs(np.array([0, 1, 2, 5, 7, 8])) == [
        (0, 3, slice(0, 3)),
        (5, 6, slice(3, 4)),
        (7, 9, slice(4, 6)),
    ]
    assert row_runs(np.array([], dtype=np.int64)) == []
