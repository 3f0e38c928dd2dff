"""The NATIX `natix-network-org/roadwork` parquet schema and the project's index schema.

The raw schema is the Hugging Face dataset's, column for column (the dots are part of the flat
column names). The synthetic generator writes exactly this, so the embedded default runs the real
ingest code.
"""

from __future__ import annotations

import json
import re

import pyarrow as pa

IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])

RAW_SCHEMA = pa.schema(
    [
        ("image", IMAGE_STRUCT),
        ("id", pa.int64()),
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("license", pa.int64()),
        ("flickr_url", pa.float64()),
        ("coco_url", pa.float64()),
        ("date_captured", pa.int64()),
        ("gps", pa.string()),
        ("city_name", pa.string()),
        ("scene_description", pa.string()),
        ("video_info.frame_id", pa.string()),
        ("video_info.seq_id", pa.int64()),
        ("video_info.vid_id", pa.string()),
        ("scene_level_tags.daytime", pa.string()),
        ("scene_level_tags.scene_environment", pa.string()),
        ("scene_level_tags.travel_alteration", pa.string()),
        ("scene_level_tags.weather", pa.string()),
        ("label", pa.int64()),
    ]
)

# Columns without which a shard cannot be ingested at all (the file fails, naming the column).
REQUIRED_COLUMNS = ("image", "id", "label")

# Hugging Face `datasets` feature metadata, as the hub's parquet shards carry it.
_HF_FEATURES = {
    name: (
        {"_type": "Image"}
        if name == "image"
        else {"dtype": str(RAW_SCHEMA.field(name).type), "_type": "Value"}
    )
    for name in RAW_SCHEMA.names
}
HF_METADATA = {b"huggingface": json.dumps({"info": {"features": _HF_FEATURES}}).encode()}

SHARD_RE = re.compile(r"^(?P<split>[A-Za-z0-9_]+)-(?P<index>\d{5})-of-(?P<total>\d{5})\.parquet$")


# Side table of the objects drawn on every synthetic image (shard, row, polygons): the ground truth that
# `masks.source: truth` rasterises. Kept out of the shards so they stay in the exact NATIX schema, and
# an Arrow file rather than parquet so that ingest (which takes every *.parquet for a shard) skips it.
TRUTH_FILE = "truth_masks.arrow"


def shard_name(split: str, index: int, total: int) -> str:
    """`train-00003-of-00026.parquet`, the hub's shard naming."""
    return f"{split}-{index:05d}-of-{total:05d}.parquet"


# The prepared index: one row per unique image; the image bytes stay in the raw shard.
INDEX_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),  # sha256 of the image bytes (hex): the key of every cache
        ("split", pa.string()),  # from the shard name: "train", "test", ...
        ("shard", pa.string()),  # shard path relative to paths.raw
        ("row", pa.int64()),  # row of the image inside that shard
        ("source_id", pa.int64()),  # the dataset's own `id`
        ("width", pa.int32()),  # displayed size: EXIF orientation already applied
        ("height", pa.int32()),
        ("orientation", pa.int8()),  # EXIF orientation tag (1 = none)
        ("mode", pa.string()),  # PIL mode of the stored image ("RGB", "L", "CMYK", ...)
        ("format", pa.string()),  # PIL format ("JPEG", "MPO", "PNG", ...)
        ("label", pa.int8()),  # 0 / 1, null in an unlabelled split
        ("lat", pa.float64()),  # null when the row has no GPS
        ("lon", pa.float64()),
        ("city", pa.string()),
        ("scene_description", pa.string()),  # null when absent or blank
        ("vid_id", pa.string()),
        ("frame_id", pa.string()),
        ("seq_id", pa.int64()),
        ("daytime", pa.string()),  # null when absent
        ("scene_environment", pa.string()),
        ("travel_alteration", pa.list_(pa.string())),  # parsed list; [] when "[]" or "['None']"
        ("weather", pa.list_(pa.string())),
        ("group", pa.string()),  # grouping key for splits: "vid:<vid_id>", "gps:<cell>" or "img:<id>"
        ("duplicates", pa.int32()),  # how many raw rows collapsed into this one (1 = unique)
    ]
)

QUARANTINE_SCHEMA = pa.schema(
    [
        ("shard", pa.string()),
        ("row", pa.int64()),
        ("split", pa.string()),
        ("source_id", pa.int64()),
        ("field", pa.string()),  # the offending column
        ("reason", pa.string()),  # machine-readable reason code, e.g. "image_undecodable"
        ("detail", pa.string()),  # human-readable detail
    ]
)

# Optional fields of indexed rows that did not convert or parse and were set to NULL ([] for tag lists),
# one entry per (row, field); the row itself is in the index unless it collapsed into a duplicate.
REPAIRS_SCHEMA = pa.schema(
    [
        *QUARANTINE_SCHEMA,
        ("value", pa.string()),  # the raw value as text (repr for non-strings), cut beyond 1000 chars
    ]
)
