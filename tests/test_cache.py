import numpy as np
import pytest

from roadwork.features.cache import FeatureCache, StaleCacheError

ATTRS = {"backbone_fingerprint": "abc", "plan_fingerprint": "def", "side": 32}


def make(path, attrs=ATTRS, chunk_rows=4):
    return FeatureCache.create(path, copies=2, views=3, dim=5, chunk_rows=chunk_rows, attrs=attrs)


def features(n, seed=0):
    return np.random.default_rng(seed).normal(size=(n, 2, 3, 3, 5)).astype(np.float32)


def test_write_read_round_trip(tmp_path):
    cache = make(tmp_path / "c.zarr")
    ids = [f"img{i}" for i in range(6)]
    rows = cache.ensure_rows(ids)
    assert rows.tolist() == list(range(6))
    feats = features(6)
    cache.write_features(rows, feats, np.array([2, 2, 1, 1, 2, 1]))
    reopened = FeatureCache.open_checked(tmp_path / "c.zarr", ATTRS)
    order = ["img3", "img0", "img5"]
    got, copies = reopened.read(order, ["cls", "patch_max"])
    want = np.concatenate([feats[[3, 0, 5], :, :, 0], feats[[3, 0, 5], :, :, 2]], axis=-1)
    np.testing.assert_allclose(got, want.astype(np.float16))
    assert got.dtype == np.float16 and got.shape == (3, 2, 3, 10)
    assert copies.tolist() == [1, 2, 1]
    only_global, _ = reopened.read(order, ["patch_mean"], views=[0])
    assert only_global.shape == (3, 2, 1, 5)


def test_incremental_rows_keep_their_place(tmp_path):
    cache = make(tmp_path / "c.zarr")
    cache.ensure_rows(["a", "b"])
    rows = cache.ensure_rows(["c", "a", "d"])
    assert rows.tolist() == [2, 0, 3]
    assert FeatureCache.create(
        tmp_path / "c.zarr", copies=2, views=3, dim=5, chunk_rows=4, attrs=ATTRS
    ).row_of == {"a": 0, "b": 1, "c": 2, "d": 3}


def test_unfinished_rows_are_refused(tmp_path):
    cache = make(tmp_path / "c.zarr")
    rows = cache.ensure_rows(["a", "b"])
    cache.write_features(rows[:1], features(1), np.array([1]))
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
    cache.write_features(cache.ensure_rows(["a"]), features(1), np.array([2]))
    rebuilt = make(tmp_path / "c.zarr", attrs={**ATTRS, "side": 64})
    assert rebuilt.row_of == {}
    kept = make(tmp_path / "c.zarr", attrs={**ATTRS, "side": 64})
    assert kept.row_of == {}
    kept.write_features(kept.ensure_rows(["b"]), features(1), np.array([1]))
    assert make(tmp_path / "c.zarr", attrs={**ATTRS, "side": 64}).row_of == {"b": 0}


def test_unknown_token(tmp_path):
    cache = make(tmp_path / "c.zarr")
    cache.write_features(cache.ensure_rows(["a"]), features(1), np.array([1]))
    with pytest.raises(ValueError, match=r"unknown token"):
        cache.read(["a"], ["max"])
