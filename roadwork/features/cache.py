"""The zarr feature cache: `[N, C, V, D]` float16 arrays keyed by image id, with fingerprint attrs.

Layout of `features/backbone.zarr`:
    cls, patch_mean, patch_max   [N, C, V, D] float16  (C = 1 + augmented + challenge copies; copy 0 is
                                                        the clean view, then augmented copies of the
                                                        views, then validator-style copies of the image)
    image_id                     [N] str               (sha256 of the image bytes; row -> image)
    copies                       [N] int8              (valid copies of the row: all for train rows, else 1)
    done                         [N] bool              (written last: a row is usable only when True)
    attrs                        fingerprints of everything the features depend on

Every array is stored in zarr shards of `shard_rows` rows (one file per array and shard, holding
compressed chunks of `chunk_rows` rows), so the number of files DVC tracks grows with N / shard_rows,
not N / chunk_rows. A shard is the unit of writing, of resuming and of work per process: writers
write a shard's rows in one go, and under torchrun no two processes ever write the same shard file.

Rows are appended in the order images are first seen, so adding images never moves existing rows, and
readers look rows up by image id, so images removed from the index are simply never read.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from roadwork.config import Paths
from roadwork.features.manifest import read_manifest
from roadwork.views.plan import read_plan
from roadwork.views.protocols import check_protocol

TOKENS = ("cls", "patch_mean", "patch_max")
# Bump when the meaning or layout of the stored arrays changes (pooling, preprocessing, storage): old
# caches go stale and are refused by name. 3: every array in zarr shards.
FORMAT_VERSION = 3


@dataclass(frozen=True)
class CacheKey:
    """What cached features depend on besides the backbone and the view rule: a reader of the cache
    needs these keys of `extract:` only (they are checked against the cache's attrs)."""

    side: int  # view side in pixels; a multiple of the patch size (DINOv3 drops the remainder)
    mean: tuple[float, ...]  # per-channel normalisation
    std: tuple[float, ...]
    seed: int  # augmentation seed


@dataclass(frozen=True)
class ExtractConfig(CacheKey):
    """params `extract:`: how views become cached features."""

    aug_copies: int  # augmented copies of a training image's views, besides the clean copy 0
    batch_images: int  # images per forward pass (x views x copies)
    chunk_rows: int  # compressed chunk along images inside a shard: the unit of reading
    shard_rows: int  # rows per shard file (a multiple of chunk_rows): the unit of writing and resuming
    workers: int  # DataLoader worker processes decoding images (0 = in the main process)
    device: str  # auto | cpu | cuda
    splits: tuple[str, ...]  # index splits to extract; only "train" rows get augmented copies
    compile: bool  # torch.compile the backbone, run in fixed-size batches (one compilation per run)
    challenge_copies: int = 0  # validator-style copies of a training image (a protocol and a level 0-3
    # drawn each, a JPEG of quality 75), cut into views as the served model cuts a query
    challenge_protocols: dict[str, float] = field(default_factory=lambda: {"crop": 1.0})  # the share of
    # copies drawn per protocol (crop | letterbox | native: shared VALIDATOR.md)

    def __post_init__(self) -> None:
        for protocol in self.challenge_protocols:
            check_protocol(protocol)
        if self.challenge_copies and not any(v > 0 for v in self.challenge_protocols.values()):
            raise ValueError(f"extract.challenge_protocols={self.challenge_protocols}: no positive share")


def expected_attrs(config: CacheKey, *, backbone: dict[str, Any], plan_meta: dict[str, Any]) -> dict:
    """Everything the cached features depend on; readers compare this with the cache's attrs."""
    if config.side % backbone["patch_size"]:
        raise ValueError(
            f"extract.side={config.side} is not a multiple of the patch size {backbone['patch_size']}: "
            "DINOv3 would silently drop the remainder"
        )
    return {
        "backbone_fingerprint": backbone["fingerprint"],
        # The view rule, not the per-image plan: adding images must not invalidate the cache.
        "view_rule_fingerprint": plan_meta["rule_fingerprint"],
        "side": config.side,
        "mean": list(config.mean),
        "std": list(config.std),
        "aug_seed": config.seed,
        "tokens": ["cls", "patch_mean", "patch_max"],
    }


class StaleCacheError(RuntimeError):
    """A cache built with other weights, views or preprocessing than the reader's config."""


def check_attrs(path: Path, attrs: dict[str, Any], expected: dict[str, Any]) -> None:
    """Raise StaleCacheError naming every key whose stored value differs from the expected one."""
    diffs = [
        f"{key}: cache has {attrs.get(key)!r}, config wants {value!r}"
        for key, value in expected.items()
        if attrs.get(key) != value
    ]
    if diffs:
        raise StaleCacheError(f"{path}: stale cache, rebuild it (`dvc repro`):\n  " + "\n  ".join(diffs))


def row_runs(rows: np.ndarray) -> list[tuple[int, int, slice]]:
    """Runs of consecutive rows in sorted, distinct `rows`: (first row, end row, their positions)."""
    bounds = [0, *(np.flatnonzero(np.diff(rows) != 1) + 1).tolist(), len(rows)]
    return [(int(rows[a]), int(rows[b - 1]) + 1, slice(a, b)) for a, b in pairwise(bounds) if b > a]


def read_rows(array: zarr.Array, rows: np.ndarray) -> np.ndarray:
    """`array[rows]` (any order, repeats allowed), reading only the chunks that hold a wanted row."""
    chunk = array.chunks[0]
    wanted = np.unique(rows)
    parts = []
    for first, end, _ in row_runs(np.unique(wanted // chunk)):
        start, stop = first * chunk, min(end * chunk, array.shape[0])
        block = array[start:stop]
        parts.append(block[wanted[(wanted >= start) & (wanted < stop)] - start])
    values = np.concatenate(parts) if parts else np.zeros((0, *array.shape[1:]), dtype=array.dtype)
    return values[np.searchsorted(wanted, rows)]


class RowCache:
    """A zarr group of per-image arrays `[N, ...]` keyed by `image_id`, with a `done` flag per row.

    `arrays` maps a name to (trailing shape, dtype). Writers append rows for new images and mark rows
    done only after their values are written; readers look rows up by image id and refuse unfinished
    ones. A writer whose attrs (or array layout) differ from the stored ones starts the cache anew.
    """

    kind = "cache"  # for messages: which stage builds it

    def __init__(self, path: Path, group: zarr.Group):
        self.path = Path(path)
        self.group = group
        ids = [str(i) for i in group["image_id"][:]]
        # Rows are appended with their ids written last: an append killed half-way leaves rows
        # without an id (""), which are not rows yet and are taken again by the next append.
        count = ids.index("") if "" in ids else len(ids)
        self.row_of = {i: r for r, i in enumerate(ids[:count])}

    @classmethod
    def create_or_open(
        cls,
        path: Path,
        *,
        arrays: dict[str, tuple[tuple[int, ...], str]],
        chunk_rows: int,
        shard_rows: int,
        attrs: dict[str, Any],
    ) -> RowCache:
        """Open for writing; a cache with other attrs or arrays is deleted and started anew. The chunk
        and shard sizes apply to a new cache; an existing one keeps its own (storage layout only)."""
        path = Path(path)
        if chunk_rows < 1 or shard_rows % chunk_rows:
            raise ValueError(
                f"{path}: shard_rows={shard_rows} must be a positive multiple of chunk_rows={chunk_rows}"
            )
        layout = {name: [list(tail), dtype] for name, (tail, dtype) in arrays.items()}
        wanted = {**attrs, "arrays": layout, "format": FORMAT_VERSION}
        if path.exists():
            group = zarr.open_group(path, mode="r+")
            if dict(group.attrs) == wanted:
                return cls(path, group)
            print(f"{path}: cache attrs differ from the config, rebuilding from scratch")
            shutil.rmtree(path)
        group = zarr.open_group(path, mode="w")
        codec = [BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle")]
        columns = {name: (tail, dtype, 0) for name, (tail, dtype) in arrays.items()}
        columns |= {"image_id": ((), str, None), "done": ((), bool, False)}
        for name, (tail, dtype, fill) in columns.items():
            group.create_array(
                name,
                shape=(0, *tail),
                chunks=(chunk_rows, *tail),
                shards=(shard_rows, *tail),
                dtype=dtype,
                compressors=codec,
                fill_value=fill,
            )
        group.attrs.update(wanted)
        return cls(path, group)

    @classmethod
    def open_checked(cls, path: Path, expected: dict[str, Any]) -> RowCache:
        """Open for reading; refuse a cache whose attrs do not match `expected`."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no {cls.kind}; run `dvc repro` first")
        group = zarr.open_group(path, mode="r")
        check_attrs(path, dict(group.attrs), {**expected, "format": FORMAT_VERSION})
        return cls(path, group)

    @property
    def shard_rows(self) -> int:
        """Rows per shard file: the unit of writing, resuming and of work per process."""
        done = self.group["done"]
        return done.shards[0]

    @property
    def array_names(self) -> list[str]:
        return list(self.group.attrs["arrays"])

    def ensure_rows(self, image_ids: Sequence[str]) -> np.ndarray:
        """Rows of `image_ids`, appending rows for ids not in the cache yet (incremental extraction)."""
        new = [i for i in dict.fromkeys(image_ids) if i not in self.row_of]
        if new:
            start = len(self.row_of)
            n = start + len(new)
            for name in (*self.array_names, "done", "image_id"):
                array = self.group[name]
                array.resize((n, *array.shape[1:]))
            # Resizing can bring back values of a killed append (zarr keeps a partly cut chunk).
            self.group["done"][start:n] = False
            self.group["image_id"][start:n] = np.array(new, dtype=object)  # last: the rows now exist
            self.row_of.update({i: start + k for k, i in enumerate(new)})
        return np.array([self.row_of[i] for i in image_ids], dtype=np.int64)

    def done_mask(self, rows: np.ndarray) -> np.ndarray:
        return read_rows(self.group["done"], np.asarray(rows, dtype=np.int64))

    def write(self, rows: np.ndarray, values: dict[str, np.ndarray]) -> None:
        """Write every array's values for `rows`, then mark the rows done (done is written last).

        Rows go in as runs of consecutive rows (slices), one write per run: zarr 3.1's orthogonal
        writes into sharded arrays fail (zarr-python issue 2834), and a run rewrites its shard once."""
        order = np.argsort(rows, kind="stable")
        runs = row_runs(np.asarray(rows)[order])
        for name in self.array_names:
            ordered = np.asarray(values[name])[order]
            for first, end, at in runs:
                self.group[name][first:end] = ordered[at]
        for first, end, _ in runs:
            self.group["done"][first:end] = True

    def rows_for(self, image_ids: Sequence[str]) -> np.ndarray:
        """Rows of `image_ids`; every one must be present and done."""
        missing = [i for i in image_ids if i not in self.row_of]
        if missing:
            raise StaleCacheError(f"{self.path}: {len(missing)} image(s) not extracted, e.g. {missing[0]}")
        rows = np.array([self.row_of[i] for i in image_ids], dtype=np.int64)
        not_done = rows[~self.done_mask(rows)]
        if len(not_done):
            raise StaleCacheError(f"{self.path}: {len(not_done)} row(s) unfinished; re-run extraction")
        return rows

    def read_array(self, name: str, image_ids: Sequence[str]) -> np.ndarray:
        """`name` for `image_ids`, in their order. Read as slices over runs of consecutive chunks that
        hold a wanted row: zarr 3's orthogonal indexing by a row list decodes chunk by chunk in
        Python (6.5 s for the embedded default's view masks, against 0.1 s as one slice)."""
        return read_rows(self.group[name], self.rows_for(image_ids))


class ShardWriter:
    """Collects per-row values and writes each shard once all of its pending rows are in: one write per
    array and shard (zarr rewrites a whole shard file on any write into it), then the rows' done flags."""

    def __init__(self, cache: RowCache, rows: Sequence[int]):
        self.cache = cache
        self.pending: dict[int, set[int]] = {}
        for row in rows:
            self.pending.setdefault(row // cache.shard_rows, set()).add(row)
        self.buffers: dict[int, dict[int, dict[str, np.ndarray]]] = {}

    def add(self, row: int, values: dict[str, np.ndarray]) -> None:
        shard = row // self.cache.shard_rows
        self.buffers.setdefault(shard, {})[row] = values
        self.pending[shard].discard(row)
        if not self.pending[shard]:
            rows = sorted(self.buffers[shard])
            block = {name: np.stack([self.buffers[shard][r][name] for r in rows]) for name in values}
            self.cache.write(np.array(rows, dtype=np.int64), block)
            del self.buffers[shard], self.pending[shard]


class FeatureCache(RowCache):
    """The backbone feature cache (module docstring): token arrays `[N, C, V, D]` plus valid copies."""

    kind = "feature cache"

    @classmethod
    def create(
        cls, path: Path, *, copies: int, views: int, dim: int, chunk_rows: int, shard_rows: int, attrs: dict
    ) -> FeatureCache:
        arrays = {name: ((copies, views, dim), "float16") for name in TOKENS} | {"copies": ((), "int8")}
        shape = {"chunk_rows": chunk_rows, "shard_rows": shard_rows}
        return cls.create_or_open(path, arrays=arrays, attrs=attrs, **shape)

    @property
    def challenge_copies(self) -> int:
        """How many of a full row's copies are validator-style copies (the last ones)."""
        return int(self.group.attrs.get("challenge_copies", 0))

    def row_values(self, features: np.ndarray) -> dict[str, np.ndarray]:
        """One row's arrays from its `features` `[c, V, 3, D]` (c valid copies, the three tokens stacked);
        copies beyond c stay zero."""
        copies, views, dim = self.group[TOKENS[0]].shape[1:]
        padded = np.zeros((copies, views, 3, dim), dtype=np.float16)
        padded[: len(features)] = features
        return {name: padded[:, :, k] for k, name in enumerate(TOKENS)} | {"copies": np.int8(len(features))}

    def read(
        self, image_ids: Sequence[str], tokens: Sequence[str], views: Sequence[int] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Features `[n, C, V', T*D]` float16 (tokens concatenated) and valid copies `[n]` for `image_ids`."""
        unknown = [t for t in tokens if t not in TOKENS]
        if unknown:
            raise ValueError(f"unknown token(s) {unknown}; expected some of {TOKENS}")
        parts = [self.read_array(name, image_ids) for name in tokens]
        if views is not None:
            parts = [p[:, :, list(views)] for p in parts]
        return np.concatenate(parts, axis=-1), self.read_array("copies", image_ids).astype(np.int64)


def open_features(paths: Paths, config: CacheKey) -> FeatureCache:
    """The feature cache for reading, checked against the backbone manifest, the view rule and the
    cache key (`StaleCacheError` naming every difference otherwise)."""
    backbone = read_manifest(Path(paths.backbone), "backbone")
    _, plan_meta = read_plan(Path(paths.views))
    return FeatureCache.open_checked(
        Path(paths.features), expected_attrs(config, backbone=backbone, plan_meta=plan_meta)
    )
