"""Ingest: validate and normalise the raw NATIX parquet shards into the prepared index.

One index row per unique image (`schema.INDEX_SCHEMA`); the bytes stay in the raw shard, the index
points at (shard, row). Only an unusable image, label or id sends a row to quarantine (one entry per
fault: field, reason, detail). A faulty optional field (GPS, tags, texts, video ids, sizes, dates...)
becomes NULL ([] for tag lists) and the row is kept, with one `repairs` entry per field (with the raw
value). Every row read is indexed, quarantined or collapsed into a duplicate. Memory stays bounded by
one shard's metadata plus one row group of images per header worker.

Duplicates (identical bytes) collapse to the copy in the highest-ranked split: splits listed in
`labelled_splits` rank in list order, last wins (with `[train, test]` the test copy is kept: never
train on an evaluation image); splits not listed (unlabelled, e.g. `challenge`) rank above them all,
as they are evaluation data too. Ties keep the first (shard, row).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import math
import multiprocessing
from collections import Counter
from collections.abc import Generator
from concurrent.futures import ProcessPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import Any, NamedTuple

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageFile, UnidentifiedImageError

from roadwork.data import schema
from roadwork.data.images import ImageTooLargeError, check_pixels
from roadwork.data.index import INDEX_FILE, QUARANTINE_FILE, REPAIRS_FILE
from roadwork.data.parse import ParseError, clean_text, parse_gps, parse_list
from roadwork.progress import progress

_TAGS = {"scene_level_tags.travel_alteration": "travel_alteration", "scene_level_tags.weather": "weather"}
_TEXTS = {
    "city_name": "city",
    "scene_description": "scene_description",
    "video_info.vid_id": "vid_id",
    "video_info.frame_id": "frame_id",
    "scene_level_tags.daytime": "daytime",
    "scene_level_tags.scene_environment": "scene_environment",
}
_META_COLUMNS = [name for name in schema.RAW_SCHEMA.names if name != "image"]
_EXIF_ORIENTATION = 0x0112
_HEADER_BATCH = 32  # rows per arrow batch inside a row group: bounds the Python copies of image bytes
_READ_BUFFER = 4 << 20  # bytes per buffered parquet read
_CAST_ERRORS = (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError)
# A fault in one of these quarantines the row; a fault elsewhere is repaired (NULL) and the row kept.
_REQUIRED_FIELDS = frozenset(schema.REQUIRED_COLUMNS)
_MAX_VALUE_CHARS = 1000  # raw values kept in the repairs table (a tag string may be arbitrarily long)
# A raw row dropped for a duplicate (not written: the index's `duplicates` counts them), with the
# image_id of the index row it collapsed into.
_COLLAPSED_SCHEMA = pa.schema(
    [("shard", pa.string()), ("row", pa.int64()), ("split", pa.string()), ("source_id", pa.int64()),
     ("image_id", pa.string())]
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class IngestConfig:
    """The `ingest` section of params.yaml."""

    labelled_splits: tuple[str, ...]  # splits whose rows must carry a 0/1 label; the order ranks duplicates
    gps_cell_deg: float  # side of the GPS grouping cell in degrees, for rows without a video id
    workers: int  # processes decoding image headers (1 = inline); results do not depend on it

    def __post_init__(self) -> None:
        if not self.gps_cell_deg > 0:
            raise ValueError(f"ingest.gps_cell_deg: must be > 0, got {self.gps_cell_deg}")
        if self.workers < 1:
            raise ValueError(f"ingest.workers: must be >= 1, got {self.workers}")


class IngestError(ValueError):
    """Input that cannot be ingested at all (a root or a file, not a row)."""


@dataclasses.dataclass
class IngestResult:
    """The prepared index, quarantine, repairs and collapsed copies, and the metrics of one ingest run."""

    index: pl.DataFrame  # exactly INDEX_SCHEMA, sorted by (split, shard, row)
    quarantine: pl.DataFrame  # QUARANTINE_SCHEMA, one entry per (row, fault)
    repairs: pl.DataFrame  # REPAIRS_SCHEMA, one entry per (kept row, optional field set to NULL)
    collapsed: pl.DataFrame  # _COLLAPSED_SCHEMA: the copies dropped for a duplicate, one per raw row
    metrics: dict[str, Any]  # JSON-ready


@dataclasses.dataclass
class _Shard:
    """One shard whose columns have been checked: where it is, its split, row groups, missing columns."""

    path: Path
    rel: str  # relative to the dataset root, posix
    split: str
    rows: int
    row_groups: list[tuple[int, int]]  # (row group index, its first row)
    missing: list[str]  # optional RAW_SCHEMA columns the file lacks


class Fault(NamedTuple):
    """One faulty field of a raw row: quarantines the row if the field is required, else repaired."""

    field: str
    reason: str
    detail: str
    value: str | None = None  # the raw value as text


class Header(NamedTuple):
    """What ingest keeps of one image: its hash and header, or why it is unusable. No pixels."""

    row: int
    image_id: str | None  # sha256 hex of the bytes; None when there are none
    reason: str | None  # quarantine reason code; None when the image is usable
    detail: str | None
    width: int | None = None  # displayed size: EXIF orientation applied
    height: int | None = None
    orientation: int | None = None
    mode: str | None = None
    format: str | None = None


def find_shards(root: Path) -> list[tuple[Path, str]]:
    """All `*.parquet` under `root` (recursive, sorted by relative path) with the split from the name.

    Hidden folders (a hub download's `.cache/`) are skipped.
    """
    root = Path(root)
    if not root.is_dir():
        raise IngestError(f"{root}: dataset root not found")
    paths = [p for p in root.rglob("*.parquet") if not any(s[0] == "." for s in p.relative_to(root).parts)]
    if not paths:
        raise IngestError(f"{root}: no *.parquet shards found")
    shards = []
    for path in sorted(paths, key=lambda p: p.relative_to(root).as_posix()):
        match = schema.SHARD_RE.match(path.name)
        if match is None:
            raise IngestError(f"{path}: shard name does not follow '<split>-NNNNN-of-NNNNN.parquet'")
        shards.append((path, match.group("split")))
    return shards


def _bytes_type(dtype: pa.DataType) -> pa.DataType | None:
    """The binary type holding the image bytes: the `bytes` field of the HF Image struct (or the column)."""
    if pa.types.is_struct(dtype):
        index = dtype.get_field_index("bytes")
        return None if index < 0 else _bytes_type(dtype.field(index).type)
    return dtype if pa.types.is_binary(dtype) or pa.types.is_large_binary(dtype) else None


def _open_shard(path: Path, root: Path, split: str) -> _Shard:
    """Check a shard's columns (required ones present, image holds bytes) from its footer alone."""
    try:
        pf = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as e:
        raise IngestError(f"{path}: not a readable parquet file ({e})") from e
    columns = pf.schema_arrow
    for name in schema.REQUIRED_COLUMNS:
        if name not in columns.names:
            raise IngestError(f"{path}: required column {name!r} is missing (columns: {columns.names})")
    if _bytes_type(image_type := columns.field("image").type) is None:
        raise IngestError(f"{path}: column 'image' has type {image_type}, expected {schema.IMAGE_STRUCT}")
    row_groups, first = [], 0
    for i in range(pf.metadata.num_row_groups):
        row_groups.append((i, first))
        first += pf.metadata.row_group(i).num_rows
    missing = [name for name in schema.RAW_SCHEMA.names if name not in columns.names]
    return _Shard(path, path.relative_to(root).as_posix(), split, pf.metadata.num_rows, row_groups, missing)


def _decode(data: bytes) -> tuple[int, int, int, str, str]:
    """(width, height, orientation, mode, format) of the stored image, after decoding all of it."""
    with Image.open(io.BytesIO(data)) as im:
        width, height, mode, fmt = *im.size, im.mode, im.format or ""
        # JPEG decodes at 1/8 scale (DCT scaling): every entropy-coded byte is still read, so truncation
        # is caught for a fraction of a full decode. Other formats ignore draft and decode fully.
        im.draft(None, (max(1, width // 8), max(1, height // 8)))
        # What no stage could decode within MAX_PIXELS is refused here, before getexif: PIL decodes a
        # whole PNG to look for its EXIF.
        check_pixels(im, len(data))
        orientation = int(im.getexif().get(_EXIF_ORIENTATION, 1))
        im.load()
    return width, height, orientation if 1 <= orientation <= 8 else 1, mode, fmt


def image_header(row: int, data: bytes | None) -> Header:
    """Hash and decode one image; an unusable one gets its quarantine reason instead of a header."""
    if not data:
        return Header(row, None, "image_missing", "null image or empty bytes")
    image_id = hashlib.sha256(data).hexdigest()
    truncated_ok = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated image must fail here, whatever the caller set
    try:
        width, height, orientation, mode, fmt = _decode(data)
    except ImageTooLargeError as e:
        return Header(row, image_id, "image_too_large", str(e))
    except UnidentifiedImageError:  # its message holds an object address: not reproducible
        return Header(row, image_id, "image_undecodable", f"{len(data)} bytes, not an image: {data[:8]!r}...")
    except Exception as e:  # arbitrary bytes can fail anywhere inside PIL: all of it means undecodable
        return Header(row, image_id, "image_undecodable", f"{len(data)} bytes: {type(e).__name__}: {e}")
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = truncated_ok
    if orientation in (5, 6, 7, 8):  # rotated by 90 degrees: the displayed width is the stored height
        width, height = height, width
    return Header(row, image_id, None, None, width, height, orientation, mode, fmt)


def _row_group_headers(task: tuple[str, int, int]) -> list[Header]:
    """Headers of one row group of a shard (runs in a worker process, which reads the bytes itself)."""
    path, row_group, first_row = task
    headers: list[Header] = []
    # Buffered page reads keep the peak near 3x the row group's image bytes instead of 4x.
    pf = pq.ParquetFile(path, buffer_size=_READ_BUFFER, pre_buffer=False)
    batches = pf.iter_batches(_HEADER_BATCH, row_groups=[row_group], columns=["image"], use_threads=False)
    try:
        for batch in batches:
            for value in batch.column(0).to_pylist():
                data = value.get("bytes") if isinstance(value, dict) else value
                headers.append(image_header(first_row + len(headers), data))
    except (OSError, pa.ArrowException) as e:  # a corrupt page: the file is broken, not one row
        raise IngestError(f"{path}: row group {row_group} (rows from {first_row}) unreadable: {e}") from e
    return headers


def _decode_headers(shards: list[_Shard], workers: int) -> Generator[list[Header], None, None]:
    """Headers per row group, in shard then row-group order, decoded by `workers` processes."""
    tasks = [(str(s.path), rg, first) for s in shards for rg, first in s.row_groups]
    if workers == 1 or len(tasks) <= 1:
        yield from map(_row_group_headers, tasks)
        return
    # spawn, not fork: forking a process whose arrow/polars thread pools are running can deadlock.
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=context)
    try:
        yield from pool.map(_row_group_headers, tasks)
    finally:  # on an error downstream, drop the queued row groups instead of decoding them all first
        pool.shutdown(cancel_futures=True)


def _as_text(value: Any) -> str:
    """A raw value as text for the repairs table: strings as they are, others by repr; long ones cut."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= _MAX_VALUE_CHARS else f"{text[:_MAX_VALUE_CHARS]}... ({len(text)} chars)"


def _conform(column: pa.ChunkedArray, target: pa.DataType) -> tuple[list[Any], dict[int, tuple[Any, str]]]:
    """Cast a column to its RAW_SCHEMA type losslessly; values that do not cast become None, and
    faults {row: (raw value, detail)}."""
    if column.type == target:
        return column.to_pylist(), {}
    try:
        return column.cast(target, safe=True).to_pylist(), {}
    except _CAST_ERRORS:
        pass  # some values do not convert: find which, one at a time
    values: list[Any] = []
    faults: dict[int, tuple[Any, str]] = {}
    for row, value in enumerate(column.to_pylist()):
        try:
            values.append(pa.array([value], type=column.type).cast(target, safe=True)[0].as_py())
        except _CAST_ERRORS:
            values.append(None)
            text = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
            faults[row] = (value, f"{text} ({column.type}) does not convert to {target}")
    return values, faults


def _read_metadata(shard: _Shard) -> tuple[dict[str, list[Any]], dict[int, list[Fault]]]:
    """The non-image columns as RAW_SCHEMA-typed lists (all null for a missing optional column, null
    for a value that does not convert), and the wrong_type faults per row."""
    table = pq.ParquetFile(shard.path).read(columns=[c for c in _META_COLUMNS if c not in shard.missing])
    columns: dict[str, list[Any]] = {}
    wrong: dict[int, list[Fault]] = {}
    for name in _META_COLUMNS:
        if name in shard.missing:
            columns[name] = [None] * shard.rows
            continue
        columns[name], faults = _conform(table.column(name), schema.RAW_SCHEMA.field(name).type)
        for row, (value, detail) in faults.items():
            wrong.setdefault(row, []).append(Fault(name, "wrong_type", detail, _as_text(value)))
    return columns, wrong


def _group(vid_id: str | None, gps: tuple[float, float] | None, image_id: str, cell: float) -> str:
    """Grouping key: frames of one video stay together, else images of one GPS cell, else the image."""
    if vid_id is not None:
        return f"vid:{vid_id}"
    if gps is not None:
        # The epsilon keeps a coordinate on a cell edge in its cell despite float division
        # (39.77 / 0.01 = 3976.9999...).
        lat_cell, lon_cell = (math.floor(v / cell + 1e-9) for v in gps)
        return f"gps:{lat_cell},{lon_cell}"
    return f"img:{image_id}"


def _check_row(
    meta: dict[str, list[Any]], row: int, wrong: list[Fault], header: Header, split: str, labelled: bool
) -> tuple[list[Fault], dict[str, Any]]:
    """Validate and parse one raw row: its faults, and the parsed values (None, or [] for a tag list,
    where a field fails: kept if the row is, as a repair)."""
    faults = list(wrong)
    if header.reason is not None:
        faults.append(Fault("image", header.reason, header.detail or ""))
    label = meta["label"][row]
    if label is None and labelled and all(f.field != "label" for f in wrong):
        faults.append(Fault("label", "label_missing", f"split {split!r} requires a 0/1 label"))
    elif label is not None and label not in (0, 1):
        faults.append(Fault("label", "label_invalid", f"label {label!r} is not 0 or 1", _as_text(label)))
    parsed: dict[str, Any] = {"gps": None}
    try:
        parsed["gps"] = parse_gps(meta["gps"][row])
    except ParseError as e:
        faults.append(Fault("gps", "gps_invalid", str(e), _as_text(meta["gps"][row])))
    for name, key in _TAGS.items():
        try:
            parsed[key] = parse_list(meta[name][row])
        except ParseError as e:
            parsed[key] = []  # as a missing tag list is encoded
            faults.append(Fault(name, "tags_invalid", str(e), _as_text(meta[name][row])))
    return faults, parsed


def _record(
    shard: _Shard, row: int, meta: dict[str, list[Any]], parsed: dict[str, Any], header: Header, cell: float
) -> dict[str, Any]:
    """The index row of a valid raw row (duplicates not yet collapsed)."""
    texts = {key: clean_text(meta[name][row]) for name, key in _TEXTS.items()}
    gps = parsed["gps"]
    return {
        "image_id": header.image_id, "split": shard.split, "shard": shard.rel, "row": row,
        "source_id": meta["id"][row], "width": header.width, "height": header.height,
        "orientation": header.orientation, "mode": header.mode, "format": header.format,
        "label": meta["label"][row], "lat": gps[0] if gps else None, "lon": gps[1] if gps else None,
        **texts, "seq_id": meta["video_info.seq_id"][row],
        "travel_alteration": parsed["travel_alteration"], "weather": parsed["weather"],
        "group": _group(texts["vid_id"], gps, header.image_id or "", cell), "duplicates": 1,
    }  # fmt: skip


def _size_mismatch(meta: dict[str, list[Any]], row: int, header: Header) -> bool:
    """The dataset's width/height disagree with the decoded size (either way round when rotated 90°)."""
    size = (meta["width"][row], meta["height"][row])
    if header.reason is not None or None in size:
        return False
    allowed = {(header.width, header.height)}
    if header.orientation in (5, 6, 7, 8):
        allowed.add((header.height, header.width))
    return size not in allowed


def _ingest_shard(shard: _Shard, headers: list[Header], config: IngestConfig) -> tuple[list, list, list, int]:
    """(index records, quarantine entries, repairs, size mismatches) of one shard."""
    meta, wrong = _read_metadata(shard)
    labelled = shard.split in config.labelled_splits
    records, quarantine, repairs, mismatches = [], [], [], 0
    for row, header in enumerate(headers):
        faults, parsed = _check_row(meta, row, wrong.get(row, []), header, shard.split, labelled)
        mismatches += _size_mismatch(meta, row, header)
        where = {"shard": shard.rel, "row": row, "split": shard.split, "source_id": meta["id"][row]}
        entries = [{**where, **fault._asdict()} for fault in faults]
        if any(fault.field in _REQUIRED_FIELDS for fault in faults):
            quarantine += entries  # every fault of the row, optional ones too (the value is not kept)
        else:
            repairs += entries
            records.append(_record(shard, row, meta, parsed, header, config.gps_cell_deg))
    return records, quarantine, repairs, mismatches


def _frame(rows: list[dict[str, Any]], arrow_schema: pa.Schema) -> pl.DataFrame:
    """A polars frame of exactly `arrow_schema` (keys outside it are dropped)."""
    frame = pl.from_arrow(pa.Table.from_pylist(rows, schema=arrow_schema))
    assert isinstance(frame, pl.DataFrame)
    return frame


def ingest(root: Path, config: IngestConfig, *, require_rows: bool = True) -> IngestResult:
    """Validate, parse and deduplicate every shard under `root` into the prepared index.

    Fails when the shards hold no row, or no valid one, unless `require_rows` is False (serving a
    single file, whose every row must still be answered).
    """
    root = Path(root)
    shards = [_open_shard(path, root, split) for path, split in find_shards(root)]  # fail before decoding
    if require_rows and sum(s.rows for s in shards) == 0:
        raise IngestError(f"{root}: the shards hold zero rows in total")
    records: list[dict[str, Any]] = []
    quarantine: list[dict[str, Any]] = []
    repairs: list[dict[str, Any]] = []
    mismatches = 0
    with closing(_decode_headers(shards, config.workers)) as decoded:  # closing stops the workers on error
        total = sum(s.rows for s in shards)
        headers = iter(progress(decoded, total=total, desc="ingest: image headers", unit="img", count=len))
        for shard in shards:
            shard_headers = [h for _ in shard.row_groups for h in next(headers)]
            shard_records, shard_quarantine, shard_repairs, shard_mismatches = _ingest_shard(
                shard, shard_headers, config
            )
            records += shard_records
            quarantine += shard_quarantine
            repairs += shard_repairs
            mismatches += shard_mismatches
    if require_rows and not records:
        raise IngestError(f"{root}: no valid rows ({len(quarantine)} quarantine entries)")
    kept, dropped, dup_stats = _collapse_duplicates(records, config.labelled_splits)
    kept.sort(key=lambda r: (r["split"], r["shard"], r["row"]))
    result = IngestResult(
        index=_frame(kept, schema.INDEX_SCHEMA),
        quarantine=_frame(quarantine, schema.QUARANTINE_SCHEMA),
        repairs=_frame(repairs, schema.REPAIRS_SCHEMA),
        collapsed=_frame(dropped, _COLLAPSED_SCHEMA),
        metrics={},
    )
    result.metrics = _metrics(shards, len(records), result, dup_stats, mismatches)
    return result


def _split_rank(split: str, labelled_splits: tuple[str, ...]) -> int:
    """Higher wins a duplicate: labelled splits by list position, unlabelled ones above them all."""
    return labelled_splits.index(split) if split in labelled_splits else len(labelled_splits)


def _collapse_duplicates(
    records: list[dict[str, Any]], labelled_splits: tuple[str, ...]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """One record per image_id (the copy in the highest-ranked split), the copies dropped, and stats."""
    rank = {split: _split_rank(split, labelled_splits) for split in {r["split"] for r in records}}
    copies: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        copies.setdefault(record["image_id"], []).append(record)
    kept, dropped, cross, conflicts = [], [], [], 0
    for image_id, group in copies.items():
        best = min(group, key=lambda r: (-rank[r["split"]], r["split"], r["shard"], r["row"]))
        kept.append({**best, "duplicates": len(group)})
        dropped += [r for r in group if r is not best]
        cross += [image_id] if len({r["split"] for r in group}) > 1 else []
        conflicts += len({r["label"] for r in group}) > 1
    return (
        kept,
        dropped,
        {
            "duplicates_collapsed": len(dropped),
            "duplicate_label_conflicts": conflicts,  # copies of one image carrying different labels
            "cross_split_duplicates": {"count": len(cross), "image_ids": sorted(cross)},
        },
    )


def _metrics(shards: list[_Shard], valid: int, result: IngestResult, dup_stats: dict[str, Any],
             size_mismatch: int) -> dict[str, Any]:  # fmt: skip
    """JSON-ready ingest metrics: rows_read = rows_indexed + quarantined + duplicates_collapsed."""
    index, quarantine, repairs = result.index, result.quarantine, result.repairs
    splits: dict[str, dict[str, int]] = {}
    for shard in shards:
        splits.setdefault(shard.split, {"rows_read": 0})["rows_read"] += shard.rows
    for split, stats in splits.items():
        labels = index.filter(pl.col("split") == split)["label"]
        stats.update(rows_indexed=labels.len(), label_0=int((labels == 0).sum()),
                     label_1=int((labels == 1).sum()), label_null=labels.null_count())  # fmt: skip
    missing = Counter(name for shard in shards for name in shard.missing)
    return {
        "shards": len(shards),
        "rows_read": sum(s.rows for s in shards),
        "rows_valid": valid,
        "rows_indexed": index.height,
        "splits": splits,
        "quarantined": quarantine.select("shard", "row").unique().height,  # rows (one may have many faults)
        "quarantined_by_reason": dict(sorted(Counter(quarantine["reason"].to_list()).items())),
        "repaired_rows": repairs.select("shard", "row").unique().height,  # kept, >= 1 field set to NULL
        "repairs_by_field": dict(sorted(Counter(repairs["field"].to_list()).items())),
        **dup_stats,
        "size_mismatch": size_mismatch,
        "missing_optional_columns": dict(sorted(missing.items())),  # column -> shards without it
        "nulls": {key: index[col].null_count() for key, col in
                  (("gps", "lat"), ("scene_description", "scene_description"), ("vid_id", "vid_id"))},
        "formats": dict(sorted(Counter(index["format"].to_list()).items())),
    }  # fmt: skip


def write_prepared(result: IngestResult, out_dir: Path) -> None:
    """Write `index.parquet`, `quarantine.parquet` and `repairs.parquet` into `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result.index.write_parquet(out_dir / INDEX_FILE)
    result.quarantine.write_parquet(out_dir / QUARANTINE_FILE)
    result.repairs.write_parquet(out_dir / REPAIRS_FILE)
