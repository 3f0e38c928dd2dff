"""Tiny NATIX-schema parquet shards for tests: real JPEG bytes made with PIL, one row dict per image.

    rows = [make_row(0), make_row(1, label=None), make_row(2, image=b"not an image")]
    write_shard(tmp_path / "data" / "train-00000-of-00001.parquet", rows)

`make_row(i)` gives distinct, valid rows for distinct `i`; any RAW_SCHEMA column can be overridden
(dotted names through a dict: `make_row(3, **{"video_info.vid_id": "v1"})`). `write_shard` can drop
columns or change their parquet types to test schema problems. `scene_shard` writes images of mixed
sizes with distinct content and returns their index rows, for the stages that read pixels.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from roadwork.data.schema import HF_METADATA, RAW_SCHEMA

_CITIES = ("indianapolis", "pittsburgh", "denver")


def jpeg_bytes(
    width: int = 64,
    height: int = 48,
    color: tuple[int, int, int] = (90, 120, 150),
    exif_orientation: int | None = None,
    comment: str | None = None,
    fmt: str = "JPEG",
) -> bytes:
    """A solid-colour image encoded by PIL (JPEG by default, or `fmt` such as "PNG").

    `exif_orientation` writes the EXIF orientation tag (stored size stays width x height);
    `comment` makes otherwise identical images differ byte for byte.
    """
    image = Image.new("RGB", (width, height), color)
    kwargs: dict[str, Any] = {}
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kwargs["exif"] = exif.tobytes()
    if comment is not None and fmt == "JPEG":
        kwargs["comment"] = comment.encode()
    buffer = io.BytesIO()
    image.save(buffer, fmt, quality=90, **kwargs)
    return buffer.getvalue()


def truncated_jpeg(width: int = 160, height: int = 120, keep: float = 0.6, seed: int = 0) -> bytes:
    """A noisy JPEG cut to `keep` of its length: its header still opens, its scan data ends early."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=95)
    data = buffer.getvalue()
    return data[: int(len(data) * keep)]


def make_row(index: int = 0, **overrides: Any) -> dict[str, Any]:
    """A valid raw row with every RAW_SCHEMA column; `index` makes its image and ids distinct.

    `image` may be overridden with raw bytes (wrapped into the HF Image struct), a struct dict, or None.
    """
    color = ((40 + 53 * index) % 256, (80 + 97 * index) % 256, (120 + 31 * index) % 256)
    row: dict[str, Any] = {
        "image": jpeg_bytes(64, 48, color, comment=f"row {index}"),
        "id": index,
        "width": 64,
        "height": 48,
        "license": 1,
        "flickr_url": None,
        "coco_url": None,
        "date_captured": 1_700_000_000 + index,
        "gps": f"[{39.7 + 0.05 * index:.8f}, {-86.1 - 0.05 * index:.8f}]",
        "city_name": _CITIES[index % len(_CITIES)],
        "scene_description": f"A road with cones, scene {index}." if index % 2 else None,
        "video_info.frame_id": None,
        "video_info.seq_id": None,
        "video_info.vid_id": None,
        "scene_level_tags.daytime": "Light",
        "scene_level_tags.scene_environment": "Urban",
        "scene_level_tags.travel_alteration": "['Partially Blocked']" if index % 2 else "[]",
        "scene_level_tags.weather": "['Sunny']" if index % 3 else "['None']",
        "label": index % 2,
    }
    unknown = set(overrides) - set(RAW_SCHEMA.names)
    if unknown:
        raise KeyError(f"make_row: not RAW_SCHEMA columns: {sorted(unknown)}")
    row.update(overrides)
    if isinstance(row["image"], bytes | bytearray):
        row["image"] = {"bytes": bytes(row["image"]), "path": None}
    return row


def raw_schema(drop: Iterable[str] = (), types: Mapping[str, pa.DataType] | None = None) -> pa.Schema:
    """RAW_SCHEMA without the `drop` columns and with `types` replacing column types."""
    types = dict(types or {})
    fields = [pa.field(f.name, types.pop(f.name, f.type)) for f in RAW_SCHEMA if f.name not in set(drop)]
    if types:
        raise KeyError(f"raw_schema: not RAW_SCHEMA columns: {sorted(types)}")
    return pa.schema(fields, metadata=HF_METADATA)


def write_shard(
    path: Path,
    rows: list[dict[str, Any]],
    drop: Iterable[str] = (),
    types: Mapping[str, pa.DataType] | None = None,
    row_group_size: int | None = None,
) -> Path:
    """Write `rows` as one NATIX-schema parquet shard (parents created); returns `path`."""
    schema = raw_schema(drop, types)
    columns = {f.name: [row.get(f.name) for row in rows] for f in schema}
    table = pa.table({f.name: pa.array(columns[f.name], type=f.type) for f in schema}, schema=schema)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


SCENE_SIZES = ((160, 90), (120, 160), (96, 72))  # landscape, portrait, small: mixed sizes by default


def scene_jpeg(i: int, width: int, height: int, noise: int = 0) -> bytes:
    """A JPEG with a bright box whose place depends on i (so features and masks differ between images),
    on a flat background, or one grained by +-`noise` grey levels (so no two crops are alike)."""
    pixels = np.full((height, width, 3), (60 + 7 * i, 90, 120), dtype=np.uint8)
    x0, y0 = (13 * i) % (width // 2), (7 * i) % (height // 2)
    pixels[y0 : y0 + height // 3, x0 : x0 + width // 4] = (250, 140, 20)
    if noise:
        grain = np.random.default_rng(i).integers(-noise, noise + 1, pixels.shape)
        pixels = np.clip(pixels + grain, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def scene_shard(
    root: Path,
    shard: str,
    first: int,
    count: int,
    *,
    test_last: bool = False,
    sizes: tuple[tuple[int, int], ...] = SCENE_SIZES,
    noise: int = 0,
) -> pl.DataFrame:
    """Write images first..first+count-1 (of `sizes` in turn, grained by `noise`) as `root/shard`;
    return their index rows (split train, or test for the last one with `test_last`)."""
    rows, index = [], []
    for k in range(count):
        i = first + k
        width, height = sizes[i % len(sizes)]
        rows.append(make_row(i, image=scene_jpeg(i, width, height, noise), width=width, height=height))
        split = "test" if test_last and k == count - 1 else "train"
        index.append({"image_id": f"img{i:03d}", "split": split, "shard": shard, "row": k})
        index[-1] |= {"width": width, "height": height}
    write_shard(root / shard, rows)
    return pl.DataFrame(index)
