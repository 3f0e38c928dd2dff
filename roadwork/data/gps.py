"""GPS-weighted sampling: cluster the test split's GPS, weight training rows by distance to it.

The test split is concentrated in a few cities; training rows close to them look like the test
distribution (same streets, signage, road furniture), so the sampler draws them more often. The
clusters come from spherical k-means (k-means under great-circle distance), the weights from fixed
distance brackets (`GpsConfig`).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

log = logging.getLogger(__name__)

EARTH_RADIUS_KM = 6371.0088  # IUGG mean Earth radius
_RESTARTS = 4  # k-means++ restarts; the best objective wins
_MAX_ITER = 100
_DEDUP_DECIMALS = 12  # unit-vector rounding that counts two points as one (~6 µm on the ground)

CLUSTERS_FILE = "clusters.parquet"
WEIGHTS_FILE = "weights.parquet"
WEIGHT_COLUMNS = ("image_id", "split", "dist_km", "cluster", "weight")
CLUSTER_COLUMNS = ("cluster", "lat", "lon", "n_test_rows", "n_train_rows")


@dataclasses.dataclass(frozen=True)
class GpsConfig:
    """The `gps` section of params.yaml."""

    k: int  # k-means clusters fitted on the test split's GPS (shrinks to the distinct points if fewer)
    seed: int  # k-means++ initialisation seed
    brackets_km: tuple[float, ...]  # increasing distance bracket edges to the nearest test cluster
    weights: tuple[float, ...]  # sampling weight per bracket; one more than brackets (beyond the last edge)
    null_weight: float  # weight of a row without GPS
    near_km: float  # radius of the reported "near a test cluster" share

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"gps.k: must be >= 1, got {self.k}")
        if len(self.weights) != len(self.brackets_km) + 1:
            raise ValueError(
                f"gps.weights: need len(brackets_km) + 1 = {len(self.brackets_km) + 1} values "
                f"(one per bracket and one beyond the last), got {len(self.weights)}"
            )
        edges = np.asarray(self.brackets_km, dtype=float)
        if np.any(edges <= 0) or np.any(np.diff(edges) <= 0):
            raise ValueError(
                f"gps.brackets_km: must be positive and strictly increasing, got {self.brackets_km}"
            )
        if any(not w > 0 for w in self.weights):
            raise ValueError(f"gps.weights: must all be > 0, got {self.weights}")
        if not self.null_weight > 0:
            raise ValueError(f"gps.null_weight: must be > 0, got {self.null_weight}")
        if not self.near_km > 0:
            raise ValueError(f"gps.near_km: must be > 0, got {self.near_km}")


@dataclasses.dataclass(frozen=True)
class GpsResult:
    """Clusters of the test GPS, per-row sampling weights and the stage's metrics."""

    clusters: pl.DataFrame  # cluster, lat, lon, n_test_rows, n_train_rows
    weights: pl.DataFrame  # image_id, split, dist_km (null: no GPS), cluster (null: no GPS), weight
    metrics: dict[str, Any]


def haversine_km(lat1: Any, lon1: Any, lat2: Any, lon2: Any) -> np.ndarray:
    """Great-circle distance in km between points given in degrees; numpy broadcasting, NaN propagates."""
    p1, l1, p2, l2 = (np.radians(np.asarray(v, dtype=float)) for v in (lat1, lon1, lat2, lon2))
    a = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin((l2 - l1) / 2) ** 2
    # Rounding can push `a` a hair past 1 for antipodes; arcsin would return NaN.
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def _to_unit(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Degrees -> [N, 3] unit vectors."""
    p, lam = np.radians(lat), np.radians(lon)
    return np.stack([np.cos(p) * np.cos(lam), np.cos(p) * np.sin(lam), np.sin(p)], axis=1)


def _to_latlon(xyz: np.ndarray) -> np.ndarray:
    """[N, 3] unit vectors -> [N, 2] (lat, lon) degrees."""
    lat = np.degrees(np.arcsin(np.clip(xyz[:, 2], -1.0, 1.0)))
    lon = np.degrees(np.arctan2(xyz[:, 1], xyz[:, 0]))
    return np.stack([lat, lon], axis=1)


def _normalise(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _kmeanspp(x: np.ndarray, w: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding on distinct weighted points, D² by chord length (monotone in arc length)."""
    first = rng.choice(len(x), p=w / w.sum())
    centres = [x[first]]
    d2 = np.sum((x - x[first]) ** 2, axis=1)
    for _ in range(1, k):
        # Points are distinct and k <= their count, so some unchosen point has d2 > 0.
        p = w * d2
        nxt = rng.choice(len(x), p=p / p.sum())
        centres.append(x[nxt])
        d2 = np.minimum(d2, np.sum((x - x[nxt]) ** 2, axis=1))
    return np.stack(centres)


def _reseed_empty(
    x: np.ndarray, w: np.ndarray, sim: np.ndarray, assign: np.ndarray, sums: np.ndarray
) -> None:
    """Move the worst-served point into each empty cluster (in place); deterministic.

    Only points of clusters with 2+ members move, so no cluster empties in turn (k <= distinct points
    guarantees one). assign and sums stay consistent, so a converged assignment has matching centres.
    """
    size = np.bincount(assign, minlength=len(sums))
    served = sim[np.arange(len(x)), assign]
    for c in np.flatnonzero(size == 0):
        movable = np.where(size[assign] > 1, served, np.inf)
        worst = int(np.argmin(movable))
        old = assign[worst]
        sums[old] -= w[worst] * x[worst]
        sums[c] = w[worst] * x[worst]
        size[old], size[c], assign[worst] = size[old] - 1, 1, c


def _lloyd(x: np.ndarray, w: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, float]:
    """Spherical Lloyd iterations; returns centres and the objective sum(w * (1 - cos))."""
    assign = np.full(len(x), -1)
    for _ in range(_MAX_ITER):
        sim = x @ centres.T
        new = np.argmax(sim, axis=1)
        if np.array_equal(new, assign):
            break
        assign = new
        sums = np.zeros_like(centres)
        np.add.at(sums, assign, x * w[:, None])
        _reseed_empty(x, w, sim, assign, sums)
        # A cluster of exactly antipodal points has no mean direction: it keeps its centre.
        flat = np.linalg.norm(sums, axis=1) == 0
        sums[flat] = centres[flat]
        centres = _normalise(sums)
    cos = np.max(x @ centres.T, axis=1)
    # 1 - cos = d² / (2 R²) for short arcs: the objective is (nearly) the haversine k-means inertia.
    return centres, float(np.sum(w * (1.0 - cos)))


def fit_clusters(lat: Any, lon: Any, k: int, seed: int) -> np.ndarray:
    """Spherical k-means of points in degrees -> centres [k', 2] (lat, lon), sorted by (lat, lon).

    NaN points are ignored. k' = min(k, distinct points). k-means++ seeding from
    `np.random.default_rng(seed)`, a few restarts, the best objective kept: deterministic per seed.
    """
    lat, lon = np.asarray(lat, dtype=float), np.asarray(lon, dtype=float)
    if lat.shape != lon.shape or lat.ndim != 1:
        raise ValueError(f"fit_clusters: lat and lon must be 1-D of equal length: {lat.shape}, {lon.shape}")
    if k < 1:
        raise ValueError(f"fit_clusters: k must be >= 1, got {k}")
    ok = np.isfinite(lat) & np.isfinite(lon)
    if not ok.any():
        raise ValueError("fit_clusters: no points with GPS to cluster")
    # Cluster the distinct points with their multiplicities: identical coordinates (frames of a
    # parked car) cannot then seed two centres at the same place.
    x, counts = np.unique(np.round(_to_unit(lat[ok], lon[ok]), _DEDUP_DECIMALS), axis=0, return_counts=True)
    x, w = _normalise(x), counts.astype(float)
    k_used = min(k, len(x))
    if k_used < k:
        log.warning("fit_clusters: %d distinct points, k shrinks from %d to %d", len(x), k, k_used)
    rng = np.random.default_rng(seed)
    best, best_obj = None, np.inf
    for _ in range(_RESTARTS):
        centres, obj = _lloyd(x, w, _kmeanspp(x, w, k_used, rng))
        if obj < best_obj - 1e-12:
            best, best_obj = centres, obj
    out = _to_latlon(best)
    return out[np.lexsort((out[:, 1], out[:, 0]))]


def nearest_km(lat: Any, lon: Any, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance (km) to and index of the nearest centre; NaN lat/lon -> NaN distance, cluster -1."""
    lat, lon = np.asarray(lat, dtype=float), np.asarray(lon, dtype=float)
    centres = np.asarray(centres, dtype=float)
    if centres.ndim != 2 or centres.shape[1] != 2 or len(centres) == 0:
        raise ValueError(f"nearest_km: centres must be [k >= 1, 2] (lat, lon), got shape {centres.shape}")
    d = haversine_km(lat[:, None], lon[:, None], centres[None, :, 0], centres[None, :, 1])
    ok = np.isfinite(lat) & np.isfinite(lon)
    cluster = np.full(len(lat), -1, dtype=np.int64)
    dist = np.full(len(lat), np.nan)
    if ok.any():
        cluster[ok] = np.argmin(d[ok], axis=1)
        dist[ok] = d[ok, cluster[ok]]
    return dist, cluster


def bracket_weights(dist_km: Any, config: GpsConfig) -> np.ndarray:
    """Weight per distance: `dist < brackets_km[i]` (first such i) -> weights[i]; NaN -> null_weight."""
    dist = np.asarray(dist_km, dtype=float)
    # side="right": a distance exactly on an edge belongs to the farther bracket ("< 50 km" excludes 50).
    idx = np.searchsorted(np.asarray(config.brackets_km), np.nan_to_num(dist, nan=np.inf), side="right")
    out = np.asarray(config.weights, dtype=float)[idx]
    return np.where(np.isnan(dist), config.null_weight, out)


def near_share(weights: Any, dist_km: Any, near_km: float) -> float:
    """Expected share of draws (probability proportional to weight) within near_km of a test cluster.

    Rows without GPS (NaN distance) count as not near. Pass uniform weights for the unweighted share.
    """
    w, d = np.asarray(weights, dtype=float), np.asarray(dist_km, dtype=float)
    if w.shape != d.shape:
        raise ValueError(f"near_share: weights {w.shape} and distances {d.shape} differ in shape")
    total = w.sum()
    if not total > 0:
        raise ValueError("near_share: weights must have a positive sum")
    near = np.nan_to_num(d, nan=np.inf) <= near_km
    return float(w[near].sum() / total)


def effective_sample_size(weights: Any) -> float:
    """Kish's effective sample size (sum w)² / sum w²: how many uniform draws the weighting is worth."""
    w = np.asarray(weights, dtype=float)
    return float(w.sum() ** 2 / np.sum(w**2)) if len(w) else 0.0


def bracket_labels(config: GpsConfig) -> list[str]:
    """Readable bracket names, e.g. ['0-50km', '50-200km', '200-500km', '500km+']."""
    edges = [0.0, *config.brackets_km]
    labels = [f"{a:g}-{b:g}km" for a, b in itertools.pairwise(edges)]
    return [*labels, f"{edges[-1]:g}km+"]


def _coords(index: pl.DataFrame, source: str) -> tuple[np.ndarray, np.ndarray]:
    """lat, lon as float arrays (null or NaN -> NaN in both); out-of-range values are errors."""
    missing = [c for c in ("image_id", "split", "lat", "lon") if c not in index.columns]
    if missing:
        raise ValueError(f"{source}: missing column(s) {missing}")
    lat = index["lat"].cast(pl.Float64).fill_null(np.nan).to_numpy().astype(float)
    lon = index["lon"].cast(pl.Float64).fill_null(np.nan).to_numpy().astype(float)
    for name, v, lim in (("lat", lat, 90.0), ("lon", lon, 180.0)):
        bad = np.flatnonzero(np.isinf(v) | (np.abs(np.nan_to_num(v)) > lim))
        if len(bad):
            i = int(bad[0])
            raise ValueError(
                f"{source}: row {i} (image_id {index['image_id'][i]}): field {name} = {v[i]} "
                f"outside [-{lim:g}, {lim:g}]"
            )
    # Half a coordinate is no position: both become missing.
    gone = np.isnan(lat) | np.isnan(lon)
    lat[gone], lon[gone] = np.nan, np.nan
    return lat, lon


def _metrics(
    config: GpsConfig, centres: np.ndarray, dist: np.ndarray, weight: np.ndarray, n_test_gps: int
) -> dict[str, Any]:
    """Metrics over the training rows: bracket counts, near shares, effective sample size."""
    labels = bracket_labels(config)
    has = ~np.isnan(dist)
    idx = np.searchsorted(np.asarray(config.brackets_km), dist[has], side="right")
    counts = np.bincount(idx, minlength=len(labels))
    n_null = int((~has).sum())
    uniform = near_share(np.ones_like(weight), dist, config.near_km)
    weighted = near_share(weight, dist, config.near_km)
    ess = effective_sample_size(weight)
    return {
        "k_requested": config.k,
        "k": len(centres),
        "n_test_gps": n_test_gps,
        "n_train": len(dist),
        "centres": [{"lat": float(a), "lon": float(b)} for a, b in centres],
        "brackets": dict(zip(labels, counts.tolist(), strict=True)) | {"no_gps": n_null},
        "bracket_weights": dict(zip(labels, config.weights, strict=True)) | {"no_gps": config.null_weight},
        "null_gps": n_null,
        "null_weight": config.null_weight,
        "near_km": config.near_km,
        "near_share_weighted": weighted,
        "near_share_uniform": uniform,
        "ess": ess,
        "ess_fraction": ess / len(dist),
    }


def build_gps(index: pl.DataFrame, config: GpsConfig, source: str = "index") -> GpsResult:
    """Fit clusters on the test rows with GPS, weight every row of the index; metrics over train rows.

    `index` needs image_id, split, lat, lon (nullable). Test rows keep their distance and cluster too
    (the report groups by cluster); the sampler uses the weights of the train rows. `source` names
    the input in error messages.
    """
    lat, lon = _coords(index, source)
    split = index["split"].to_numpy()
    test, train = split == "test", split == "train"
    fit = test & ~np.isnan(lat)
    if not fit.any():
        raise ValueError(f"{source}: no rows of split 'test' with GPS (lat/lon) to fit the clusters on")
    if not train.any():
        raise ValueError(f"{source}: no rows of split 'train' to weight")
    centres = fit_clusters(lat[fit], lon[fit], config.k, config.seed)
    dist, cluster = nearest_km(lat, lon, centres)
    weight = bracket_weights(dist, config)
    has = cluster >= 0
    # Rows without GPS: null distance and cluster in the table (NaN / -1 in the numpy API).
    weights = pl.DataFrame(
        {
            "image_id": index["image_id"].cast(pl.String),
            "split": index["split"].cast(pl.String),
            "dist_km": pl.Series(dist, dtype=pl.Float64),
            "cluster": pl.Series(cluster, dtype=pl.Int32),
            "weight": pl.Series(weight, dtype=pl.Float64),
        }
    ).with_columns(
        pl.col("dist_km").fill_nan(None),
        pl.when(pl.col("cluster") >= 0).then(pl.col("cluster")).otherwise(None).alias("cluster"),
    )
    clusters = pl.DataFrame(
        {
            "cluster": pl.Series(np.arange(len(centres)), dtype=pl.Int32),
            "lat": centres[:, 0],
            "lon": centres[:, 1],
            "n_test_rows": np.bincount(cluster[fit], minlength=len(centres)).astype(np.int64),
            "n_train_rows": np.bincount(cluster[train & has], minlength=len(centres)).astype(np.int64),
        }
    )
    metrics = _metrics(config, centres, dist[train], weight[train], int(fit.sum()))
    for c, n in zip(metrics["centres"], clusters["n_test_rows"], strict=True):
        c["n_test_rows"] = int(n)
    return GpsResult(clusters=clusters, weights=weights, metrics=metrics)


def write_gps(result: GpsResult, out_dir: str | Path) -> None:
    """Write clusters.parquet and weights.parquet into out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result.clusters.write_parquet(out / CLUSTERS_FILE)
    result.weights.write_parquet(out / WEIGHTS_FILE)


def _read(path: Path, columns: tuple[str, ...]) -> pl.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (run the gps stage)")
    frame = pl.read_parquet(path)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}")
    return frame


def read_weights(gps_dir: str | Path) -> pl.DataFrame:
    """weights.parquet: image_id, split, dist_km, cluster, weight (one row per index row)."""
    return _read(Path(gps_dir) / WEIGHTS_FILE, WEIGHT_COLUMNS)


def read_clusters(gps_dir: str | Path) -> pl.DataFrame:
    """clusters.parquet: cluster, lat, lon, n_test_rows, n_train_rows."""
    return _read(Path(gps_dir) / CLUSTERS_FILE, CLUSTER_COLUMNS)
