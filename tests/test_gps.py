"""GPS clustering, distances and sampling weights."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from roadwork.config import load_params, section, write_params
from roadwork.data import gps
from roadwork.data.gps import (
    EARTH_RADIUS_KM,
    GpsConfig,
    bracket_weights,
    build_gps,
    effective_sample_size,
    fit_clusters,
    haversine_km,
    near_share,
    nearest_km,
    read_clusters,
    read_weights,
    write_gps,
)
from roadwork.data.schema import INDEX_SCHEMA

ROOT = Path(__file__).resolve().parents[1]
INDY, PITT, COLUMBUS = (39.7684, -86.1581), (40.4406, -79.9959), (39.9612, -82.9988)
LONDON, PARIS, SYDNEY = (51.5074, -0.1278), (48.8566, 2.3522), (-33.8688, 151.2093)
FIJI = (-17.0, 180.0)  # straddles the antimeridian: a naive mean of longitudes lands near 0°


def config(**kw: object) -> GpsConfig:
    base = dict(k=5, seed=0, brackets_km=(50.0, 200.0, 500.0), weights=(5.0, 2.5, 1.0, 0.3))
    return GpsConfig(**(base | dict(null_weight=1.0, near_km=100.0) | kw))  # type: ignore[arg-type]


def blobs(centres: list[tuple[float, float]], per: int, sd: float, seed: int = 0) -> tuple[np.ndarray, ...]:
    """`per` points around each centre (degrees of noise sd), longitudes wrapped to [-180, 180)."""
    rng = np.random.default_rng(seed)
    c = np.repeat(np.asarray(centres), per, axis=0)
    lat = c[:, 0] + rng.normal(0, sd, len(c))
    lon = (c[:, 1] + rng.normal(0, sd, len(c)) + 180) % 360 - 180
    return lat, lon, np.repeat(np.arange(len(centres)), per)


# --- haversine ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "km", "rel"),
    [
        (INDY, PITT, 528.0, 0.01),
        (LONDON, PARIS, 344.0, 0.01),
        ((0.0, 0.0), (0.0, 180.0), 20015.0, 0.001),
        ((45.0, 30.0), (-45.0, -150.0), 20015.0, 0.001),
        ((90.0, 0.0), (-90.0, 0.0), 20015.0, 0.001),
    ],
)
def test_haversine_known_distances(a: tuple, b: tuple, km: float, rel: float) -> None:
    assert haversine_km(*a, *b) == pytest.approx(km, rel=rel)
    assert haversine_km(*b, *a) == pytest.approx(km, rel=rel)


def test_haversine_zero_nan_and_broadcasting() -> None:
    assert haversine_km(*INDY, *INDY) == 0.0
    assert math.isnan(haversine_km(np.nan, 0.0, 1.0, 1.0))
    lat = np.array([[0.0], [10.0], [20.0]])
    out = haversine_km(lat, 0.0, 0.0, np.array([[0.0, 1.0, 2.0, 3.0]]))
    assert out.shape == (3, 4)
    # one degree of a great circle
    assert out[0, 1] == pytest.approx(EARTH_RADIUS_KM * math.pi / 180, rel=1e-12)
    assert out[1, 0] == pytest.approx(10 * EARTH_RADIUS_KM * math.pi / 180, rel=1e-12)


# --- k-means -----------------------------------------------------------------------------------


def test_fit_clusters_recovers_cities() -> None:
    cities = [INDY, PITT, LONDON, SYDNEY, FIJI]
    lat, lon, _ = blobs(cities, per=40, sd=0.05)
    centres = fit_clusters(lat, lon, k=5, seed=0)
    assert centres.shape == (5, 2)
    for city in cities:
        assert haversine_km(centres[:, 0], centres[:, 1], *city).min() < 5.0, city
    # sorted by latitude
    assert np.all(np.diff(centres[:, 0]) >= 0)


def test_fit_clusters_assignments_match_truth() -> None:
    lat, lon, truth = blobs([INDY, PITT, LONDON], per=30, sd=0.1, seed=3)
    centres = fit_clusters(lat, lon, k=3, seed=7)
    _, cluster = nearest_km(lat, lon, centres)
    for c in range(3):
        assert len(set(cluster[truth == c])) == 1
    assert len(set(cluster)) == 3


def test_fit_clusters_deterministic_and_ignores_nan() -> None:
    lat, lon, _ = blobs([INDY, PITT, COLUMBUS, LONDON, PARIS, SYDNEY], per=25, sd=0.8, seed=1)
    a = fit_clusters(lat, lon, k=5, seed=11)
    b = fit_clusters(lat, lon, k=5, seed=11)
    np.testing.assert_array_equal(a, b)
    lat_nan, lon_nan = np.r_[lat, np.nan, 10.0], np.r_[lon, 5.0, np.nan]
    np.testing.assert_array_equal(fit_clusters(lat_nan, lon_nan, k=5, seed=11), a)


def test_fit_clusters_fewer_points_than_k(caplog: pytest.LogCaptureFixture) -> None:
    lat = np.array([INDY[0], INDY[0], PITT[0], LONDON[0], PITT[0]])
    lon = np.array([INDY[1], INDY[1], PITT[1], LONDON[1], PITT[1]])
    with caplog.at_level(logging.WARNING):
        centres = fit_clusters(lat, lon, k=5, seed=0)
    assert "k shrinks from 5 to 3" in caplog.text
    assert centres.shape == (3, 2)
    expected = np.array(sorted([INDY, PITT, LONDON]))
    np.testing.assert_allclose(centres, expected, atol=1e-9)


def test_lloyd_reseeds_empty_clusters() -> None:
    lat = np.array([0.0, 0.1, 0.2, 10.0, 10.1])
    x, w = gps._to_unit(lat, np.zeros(5)), np.ones(5)
    # two of three initial centres are far from every point: both clusters start empty
    start = gps._to_unit(np.array([0.1, 50.0, 60.0]), np.array([0.0, 100.0, -100.0]))
    centres, objective = gps._lloyd(x, w, start)
    np.testing.assert_allclose(np.sort(gps._to_latlon(centres)[:, 0]), [0.1, 10.0, 10.1], atol=1e-6)
    assert objective < 1e-5


def test_fit_clusters_errors() -> None:
    with pytest.raises(ValueError, match="no points with GPS"):
        fit_clusters(np.array([np.nan]), np.array([1.0]), k=2, seed=0)
    with pytest.raises(ValueError, match="equal length"):
        fit_clusters(np.zeros(3), np.zeros(2), k=2, seed=0)


def test_nearest_km() -> None:
    centres = np.array([INDY, LONDON])
    dist, cluster = nearest_km([PITT[0], PARIS[0], np.nan], [PITT[1], PARIS[1], 3.0], centres)
    np.testing.assert_array_equal(cluster, [0, 1, -1])
    assert dist[0] == pytest.approx(haversine_km(*PITT, *INDY))
    assert dist[1] == pytest.approx(haversine_km(*PARIS, *LONDON))
    assert np.isnan(dist[2])
    with pytest.raises(ValueError, match="centres must be"):
        nearest_km([0.0], [0.0], np.zeros((0, 2)))


# --- weights -----------------------------------------------------------------------------------


def test_sampling_weights_at_boundaries_and_nan() -> None:
    d = [0.0, 49.999, 50.0, 199.99, 200.0, 499.99, 500.0, 1.0e4, np.nan]
    w = bracket_weights(d, config(null_weight=0.7))
    np.testing.assert_array_equal(w, [5.0, 5.0, 2.5, 2.5, 1.0, 1.0, 0.3, 0.3, 0.7])


def test_near_share_by_hand() -> None:
    w = np.array([5.0, 2.5, 1.0, 0.3, 1.0, 2.0])
    d = np.array([10.0, 150.0, 80.0, np.nan, 300.0, 100.0])  # 100.0 is on the radius: near
    assert near_share(w, d, 100.0) == pytest.approx((5.0 + 1.0 + 2.0) / 11.8)
    assert near_share(np.ones(6), d, 100.0) == pytest.approx(3 / 6)
    with pytest.raises(ValueError, match="positive sum"):
        near_share(np.zeros(2), np.ones(2), 1.0)


def test_effective_sample_size() -> None:
    assert effective_sample_size(np.ones(10)) == pytest.approx(10.0)
    assert effective_sample_size([5.0, 1.0]) == pytest.approx(36 / 26)


def test_config_from_params_and_validation() -> None:
    cfg = section(GpsConfig, load_params(ROOT / "params.yaml"), "gps")
    assert len(cfg.weights) == len(cfg.brackets_km) + 1
    assert isinstance(cfg.near_km, float)
    with pytest.raises(ValueError, match="len\\(brackets_km\\) \\+ 1 = 4"):
        config(weights=(5.0, 2.5, 1.0))
    with pytest.raises(ValueError, match="strictly increasing"):
        config(brackets_km=(50.0, 50.0, 500.0))
    with pytest.raises(ValueError, match="weights: must all be > 0"):
        config(weights=(5.0, 0.0, 1.0, 0.3))
    with pytest.raises(ValueError, match="k: must be >= 1"):
        config(k=0)


# --- build_gps ---------------------------------------------------------------------------------


def small_index() -> pl.DataFrame:
    rows = [
        ("t0", "test", INDY[0], INDY[1]),
        ("t1", "test", INDY[0], INDY[1]),  # same spot twice: two distinct test points, k shrinks to 2
        ("t2", "test", PITT[0], PITT[1]),
        ("t3", "test", None, None),
        ("a", "train", INDY[0] + 0.1, INDY[1]),  # ~11 km: 5.0
        ("b", "train", COLUMBUS[0], COLUMBUS[1]),  # ~260 km from Pittsburgh: 1.0
        ("c", "train", LONDON[0], LONDON[1]),  # far: 0.3
        ("d", "train", None, None),  # no GPS: null_weight
        ("e", "train", 40.0, None),  # half a coordinate: no GPS
        ("f", "train", PITT[0], PITT[1] - 1.5),  # ~127 km: 2.5
    ]
    schema = {"image_id": pl.String, "split": pl.String, "lat": pl.Float64, "lon": pl.Float64}
    return pl.DataFrame(rows, schema=schema, orient="row")


def test_build_gps_small_frame() -> None:
    result = build_gps(small_index(), config(null_weight=0.5))
    assert result.clusters.columns == ["cluster", "lat", "lon", "n_test_rows", "n_train_rows"]
    assert result.clusters["n_test_rows"].to_list() == [2, 1]  # Indianapolis (south) first
    assert result.clusters["n_train_rows"].to_list() == [1, 3]  # London is nearer Pittsburgh
    w = result.weights
    assert w.columns == ["image_id", "split", "dist_km", "cluster", "weight"]
    assert w.schema["cluster"] == pl.Int32 and w.schema["dist_km"] == pl.Float64
    by_id = {r["image_id"]: r for r in w.iter_rows(named=True)}
    expected = {"a": 5.0, "b": 1.0, "c": 0.3, "d": 0.5, "e": 0.5, "f": 2.5}
    assert {k: by_id[k]["weight"] for k in "abcdef"} == expected
    assert by_id["d"]["dist_km"] is None and by_id["d"]["cluster"] is None and by_id["e"]["cluster"] is None
    assert by_id["t3"]["cluster"] is None and by_id["t2"]["cluster"] == 1 and by_id["a"]["cluster"] == 0
    assert by_id["b"]["dist_km"] == pytest.approx(haversine_km(*COLUMBUS, *PITT), rel=1e-6)

    m = result.metrics
    assert (m["k_requested"], m["k"], m["n_test_gps"], m["n_train"]) == (5, 2, 3, 6)
    assert m["brackets"] == {"0-50km": 1, "50-200km": 1, "200-500km": 1, "500km+": 1, "no_gps": 2}
    assert m["null_gps"] == 2 and m["bracket_weights"]["no_gps"] == 0.5
    weights = np.array([5.0, 1.0, 0.3, 0.5, 0.5, 2.5])
    assert m["near_share_uniform"] == pytest.approx(1 / 6)  # only "a" is within 100 km
    assert m["near_share_weighted"] == pytest.approx(5.0 / weights.sum())
    assert m["ess"] == pytest.approx(weights.sum() ** 2 / np.sum(weights**2))
    assert m["centres"][0]["n_test_rows"] == 2
    json.dumps(m)  # the stage writes it as JSON


def test_build_gps_errors() -> None:
    index = small_index()
    no_test_gps = index.with_columns(
        pl.when(pl.col("split") == "test").then(None).otherwise(pl.col("lat")).alias("lat")
    )
    with pytest.raises(ValueError, match=r"idx\.parquet: no rows of split 'test' with GPS"):
        build_gps(no_test_gps, config(), source="idx.parquet")
    bad = index.with_columns(pl.when(pl.col("image_id") == "c").then(95.0).otherwise("lat").alias("lat"))
    with pytest.raises(ValueError, match=r"row 6 \(image_id c\): field lat = 95.0"):
        build_gps(bad, config())
    with pytest.raises(ValueError, match=r"missing column\(s\) \['lon'\]"):
        build_gps(index.drop("lon"), config())
    with pytest.raises(ValueError, match="no rows of split 'train'"):
        build_gps(index.filter(pl.col("split") == "test"), config())


def test_write_read_round_trip(tmp_path: Path) -> None:
    result = build_gps(small_index(), config())
    write_gps(result, tmp_path / "gps")
    assert read_weights(tmp_path / "gps").equals(result.weights)
    assert read_clusters(tmp_path / "gps").equals(result.clusters)
    with pytest.raises(FileNotFoundError, match=r"weights\.parquet: not found"):
        read_weights(tmp_path / "missing")


def test_stage_writes_outputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    from stages import gps as stage

    params = load_params(ROOT / "params.yaml")
    params["paths"] = {k: str(tmp_path / k) for k in params["paths"]}
    write_params(tmp_path, params)
    (tmp_path / "prepared").mkdir()
    # The stage reads through the ingest reader, which checks the full index schema.
    full = pl.concat([pl.from_arrow(INDEX_SCHEMA.empty_table()), small_index()], how="diagonal_relaxed")
    full.write_parquet(tmp_path / "prepared" / "index.parquet")
    monkeypatch.chdir(tmp_path)
    stage.main()
    assert read_weights(tmp_path / "gps").height == 10
    metrics = json.loads((tmp_path / "metrics" / "gps.json").read_text())
    assert metrics["k"] == 2
    assert json.loads((tmp_path / "gps" / "config.json").read_text())["weights"] == [5.0, 2.5, 1.0, 0.3]
    assert capsys.readouterr().out.startswith("gps: k=2 on 3 test rows; 6 train rows")
