"""Ingest: shard discovery, row validation, quarantine and repairs, parsing, duplicates, groups, the stage."""

from __future__ import annotations

import hashlib
import io
import json
import math
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest
from PIL import Image

from roadwork.config import load_params, write_params
from roadwork.data import images
from roadwork.data.index import IndexFileError, read_index
from roadwork.data.ingest import (
    IngestConfig,
    IngestError,
    find_shards,
    ingest,
    write_prepared,
)
from roadwork.data.schema import INDEX_SCHEMA, QUARANTINE_SCHEMA, REPAIRS_SCHEMA
from tests.natix_fixture import jpeg_bytes, make_row, truncated_jpeg, write_shard

TRAIN = "data/train-00000-of-00001.parquet"
TEST = "data/test-00000-of-00001.parquet"


def _config(
    workers: int = 1, labelled: tuple[str, ...] = ("train", "test"), cell: float = 0.01
) -> IngestConfig:
    return IngestConfig(labelled_splits=labelled, gps_cell_deg=cell, workers=workers)


def _sha(row: dict) -> str:
    return hashlib.sha256(row["image"]["bytes"]).hexdigest()


def _polars_schema(schema: pa.Schema) -> pl.Schema:
    return pl.from_arrow(schema.empty_table()).schema  # type: ignore[union-attr]


# --- shard discovery -------------------------------------------------------------------------------


def test_find_shards_recursive_sorted_with_split(tmp_path: Path) -> None:
    for rel in ("data/train-00001-of-00002.parquet", "data/train-00000-of-00002.parquet",
                "extra/challenge-00000-of-00001.parquet", "data/test-00000-of-00001.parquet",
                ".cache/train-00000-of-00001.parquet"):  # fmt: skip
        write_shard(tmp_path / rel, [make_row(0)])
    found = [(p.relative_to(tmp_path).as_posix(), split) for p, split in find_shards(tmp_path)]
    assert found == [
        ("data/test-00000-of-00001.parquet", "test"),
        ("data/train-00000-of-00002.parquet", "train"),
        ("data/train-00001-of-00002.parquet", "train"),
        ("extra/challenge-00000-of-00001.parquet", "challenge"),
    ]


def test_find_shards_rejects_a_misnamed_file(tmp_path: Path) -> None:
    write_shard(tmp_path / TRAIN, [make_row(0)])
    write_shard(tmp_path / "data" / "train.parquet", [make_row(1)])
    with pytest.raises(IngestError, match=r"train\.parquet: shard name"):
        find_shards(tmp_path)


def test_no_shards_fails_naming_the_root(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    with pytest.raises(IngestError, match=f"{tmp_path}: no \\*.parquet shards"):
        ingest(tmp_path, _config())


def test_zero_rows_fails_naming_the_root(tmp_path: Path) -> None:
    write_shard(tmp_path / TRAIN, [])
    with pytest.raises(IngestError, match=f"{tmp_path}: the shards hold zero rows"):
        ingest(tmp_path, _config())


@pytest.mark.parametrize("column", ["image", "id", "label"])
def test_missing_required_column_names_file_and_column(tmp_path: Path, column: str) -> None:
    write_shard(tmp_path / TRAIN, [make_row(0)])
    write_shard(tmp_path / TEST, [make_row(1)], drop=[column])
    message = f"test-00000-of-00001.parquet: required column '{column}' is missing"
    with pytest.raises(IngestError, match=message):
        ingest(tmp_path, _config())


def test_unreadable_parquet_fails_naming_the_file(tmp_path: Path) -> None:
    write_shard(tmp_path / TRAIN, [make_row(0)])
    (tmp_path / TEST).write_bytes(b"PAR1 but not really a parquet file")
    with pytest.raises(IngestError, match=r"test-00000-of-00001\.parquet: not a readable parquet file"):
        ingest(tmp_path, _config())


def test_image_column_without_bytes_fails(tmp_path: Path) -> None:
    write_shard(tmp_path / TRAIN, [make_row(0, image=None)], types={"image": pa.string()})
    with pytest.raises(IngestError, match=r"train-00000-of-00001\.parquet: column 'image' has type string"):
        ingest(tmp_path, _config())


# --- a valid row -----------------------------------------------------------------------------------


def test_valid_row_is_parsed_into_the_index(tmp_path: Path) -> None:
    row = make_row(
        7,
        gps="[39.77160604, -86.18823935]",
        city_name="  pittsburgh ",
        scene_description="   ",
        label=1,
        **{
            "video_info.vid_id": "vid-3", "video_info.frame_id": "f12", "video_info.seq_id": 12,
            "scene_level_tags.travel_alteration": "['Partially Blocked', 'Detour']",
            "scene_level_tags.weather": "['None']", "scene_level_tags.daytime": "Dark",
        },
    )  # fmt: skip
    write_shard(tmp_path / TRAIN, [make_row(0), row])
    result = ingest(tmp_path, _config())
    assert result.quarantine.height == 0
    got = result.index.row(1, named=True)
    assert got == {
        "image_id": _sha(row), "split": "train", "shard": TRAIN, "row": 1, "source_id": 7,
        "width": 64, "height": 48, "orientation": 1, "mode": "RGB", "format": "JPEG", "label": 1,
        "lat": 39.77160604, "lon": -86.18823935, "city": "pittsburgh", "scene_description": None,
        "vid_id": "vid-3", "frame_id": "f12", "seq_id": 12, "daytime": "Dark", "scene_environment": "Urban",
        "travel_alteration": ["Partially Blocked", "Detour"], "weather": [], "group": "vid:vid-3",
        "duplicates": 1,
    }  # fmt: skip


def test_index_quarantine_and_repairs_have_exact_schemas(tmp_path: Path) -> None:
    write_shard(tmp_path / TRAIN, [make_row(0), make_row(1, label=None)])
    result = ingest(tmp_path, _config())
    assert result.index.schema == _polars_schema(INDEX_SCHEMA)
    assert list(result.index.columns) == INDEX_SCHEMA.names
    assert result.quarantine.schema == _polars_schema(QUARANTINE_SCHEMA)
    assert result.repairs.schema == _polars_schema(REPAIRS_SCHEMA)
    assert result.repairs.columns == [*QUARANTINE_SCHEMA.names, "value"]


def test_png_and_greyscale_headers(tmp_path: Path) -> None:
    grey = io.BytesIO()
    Image.new("L", (40, 30), 128).save(grey, "JPEG")
    rows = [make_row(0, image=jpeg_bytes(50, 20, fmt="PNG")), make_row(1, image=grey.getvalue())]
    write_shard(tmp_path / TRAIN, rows)
    index = ingest(tmp_path, _config()).index
    assert index.select("format", "mode", "width", "height").rows() == [
        ("PNG", "RGB", 50, 20),
        ("JPEG", "L", 40, 30),
    ]


def test_mpo_and_plain_binary_image_column(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    first, second = Image.new("RGB", (40, 30), (200, 90, 10)), Image.new("RGB", (40, 30), (10, 90, 200))
    first.save(buffer, "MPO", save_all=True, append_images=[second])
    rows = [make_row(0, image=buffer.getvalue()), make_row(1)]
    for row in rows:
        row["image"] = row["image"]["bytes"]  # a bare binary column instead of the HF Image struct
    write_shard(tmp_path / TRAIN, rows, types={"image": pa.large_binary()})
    index = ingest(tmp_path, _config()).index
    assert index.select("format", "width", "height").rows() == [("MPO", 40, 30), ("JPEG", 64, 48)]


def test_exif_orientation_6_swaps_width_and_height(tmp_path: Path) -> None:
    rows = [
        make_row(0, image=jpeg_bytes(80, 40, exif_orientation=6), width=80, height=40),  # stored size: fine
        make_row(1, image=jpeg_bytes(80, 40, exif_orientation=3), width=80, height=40),
        make_row(2, image=jpeg_bytes(80, 40), width=1920, height=1080),  # the dataset is wrong
    ]
    write_shard(tmp_path / TRAIN, rows)
    result = ingest(tmp_path, _config())
    sizes = result.index.select("width", "height", "orientation").rows()
    assert sizes == [(40, 80, 6), (80, 40, 3), (80, 40, 1)]
    assert result.metrics["size_mismatch"] == 1


# --- quarantine ------------------------------------------------------------------------------------

NOT_AN_IMAGE = b"this is plainly not an image"

BAD_ROWS = {
    "null image": ({"image": None}, "image", "image_missing"),
    "null bytes": ({"image": {"bytes": None, "path": "a.jpg"}}, "image", "image_missing"),
    "empty bytes": ({"image": b""}, "image", "image_missing"),
    "not an image": ({"image": NOT_AN_IMAGE}, "image", "image_undecodable"),
    "truncated jpeg": ({"image": truncated_jpeg()}, "image", "image_undecodable"),
    "null label": ({"label": None}, "label", "label_missing"),
    "label 2": ({"label": 2}, "label", "label_invalid"),
}


@pytest.mark.parametrize("case", list(BAD_ROWS))
def test_bad_row_goes_to_quarantine(tmp_path: Path, case: str) -> None:
    overrides, field, reason = BAD_ROWS[case]
    good, bad = make_row(0), make_row(1, **overrides)
    write_shard(tmp_path / TRAIN, [good, bad, make_row(2)])
    result = ingest(tmp_path, _config())
    assert result.quarantine.select("shard", "row", "split", "source_id", "field", "reason").rows() == [
        (TRAIN, 1, "train", 1, field, reason)
    ]
    assert result.quarantine["detail"][0]
    assert result.index["row"].to_list() == [0, 2]
    assert result.metrics["quarantined"] == 1
    assert result.metrics["quarantined_by_reason"] == {reason: 1}
    assert result.metrics["rows_read"] == 3 and result.metrics["rows_indexed"] == 2
    assert result.repairs.height == 0 and result.metrics["repaired_rows"] == 0


# --- repairs: a faulty optional field is set to NULL, the row is kept ------------------------------

# overrides, field, reason, the index column that becomes NULL ([] for tag lists) and that value
REPAIRABLE_ROWS = {
    "gps out of range": ({"gps": "[95.0, 10.0]"}, "gps", "gps_invalid", "lat", None),
    "gps not a list": ({"gps": "39.7, -86.1"}, "gps", "gps_invalid", "lon", None),
    "gps not numbers": ({"gps": "[north, west]"}, "gps", "gps_invalid", "lat", None),
    "tags malformed": ({"scene_level_tags.travel_alteration": "['Open'"},
                       "scene_level_tags.travel_alteration", "tags_invalid", "travel_alteration", []),
    "tags code": ({"scene_level_tags.weather": "__import__('os')"},
                  "scene_level_tags.weather", "tags_invalid", "weather", []),
    "tags not strings": ({"scene_level_tags.weather": "[1, 2]"},
                         "scene_level_tags.weather", "tags_invalid", "weather", []),
}  # fmt: skip


@pytest.mark.parametrize("case", list(REPAIRABLE_ROWS))
def test_repairable_row_is_kept_with_the_field_null(tmp_path: Path, case: str) -> None:
    overrides, field, reason, column, null = REPAIRABLE_ROWS[case]
    rows = [make_row(0), make_row(1, **overrides), make_row(2)]
    write_shard(tmp_path / TRAIN, rows)
    result = ingest(tmp_path, _config())
    assert result.quarantine.height == 0
    assert result.index["row"].to_list() == [0, 1, 2]
    kept = result.index.row(1, named=True)
    assert kept[column] == null
    assert (kept["image_id"], kept["label"], kept["source_id"]) == (_sha(rows[1]), 1, 1)
    if field == "gps":  # no GPS: the group falls back to the image
        assert (kept["lat"], kept["lon"], kept["group"]) == (None, None, f"img:{_sha(rows[1])}")
    else:  # the other fields are untouched
        assert kept["lat"] == pytest.approx(39.75)
    repairs = result.repairs.to_dicts()
    assert len(repairs) == 1
    raw = next(iter(overrides.values()))
    assert repairs[0] | {"detail": None} == {
        "shard": TRAIN, "row": 1, "split": "train", "source_id": 1, "field": field, "reason": reason,
        "detail": None, "value": raw,
    }  # fmt: skip
    assert raw in repairs[0]["detail"]
    assert result.metrics["repaired_rows"] == 1
    assert result.metrics["repairs_by_field"] == {field: 1}
    assert result.metrics["rows_read"] == result.metrics["rows_indexed"] == 3


def test_wrong_type_in_an_optional_column_is_repaired(tmp_path: Path) -> None:
    rows = [make_row(0, width="64"), make_row(1, width="wide", **{"video_info.seq_id": "7"}),
            make_row(2, width="64", **{"video_info.seq_id": "seven"})]  # fmt: skip
    write_shard(tmp_path / TRAIN, rows, types={"width": pa.string(), "video_info.seq_id": pa.string()})
    result = ingest(tmp_path, _config())
    assert result.quarantine.height == 0
    assert result.index.select("row", "seq_id").rows() == [(0, None), (1, 7), (2, None)]
    assert result.repairs.select("row", "field", "reason", "value").rows() == [
        (1, "width", "wrong_type", "wide"),
        (2, "video_info.seq_id", "wrong_type", "seven"),
    ]
    assert "'wide' (string) does not convert to int64" in result.repairs["detail"][0]
    assert result.metrics["size_mismatch"] == 0  # a NULL width is not compared
    assert result.metrics["repairs_by_field"] == {"video_info.seq_id": 1, "width": 1}


def test_long_raw_values_are_cut_in_the_repairs_table(tmp_path: Path) -> None:
    text = "[" + "'a', " * 2000 + "]"  # over parse_list's length guard
    write_shard(tmp_path / TRAIN, [make_row(0, **{"scene_level_tags.weather": text})])
    value = ingest(tmp_path, _config()).repairs["value"][0]
    assert value == text[:1000] + f"... ({len(text)} chars)"


def test_rows_in_are_indexed_quarantined_or_collapsed(tmp_path: Path) -> None:
    dup = make_row(4)
    train = [
        make_row(0),
        make_row(1, gps="[0, 500]", **{"scene_level_tags.weather": "Sunny, Rainy"}),  # two repairs
        make_row(2, gps="[1, 2, 3]"),  # one repair
        make_row(3, label=None, gps="[0, 500]"),  # bad label: quarantined, with its GPS fault
        dup,
        {**dup, "id": 40, "gps": "nowhere"},  # a repaired copy that collapses
        make_row(5, image=NOT_AN_IMAGE),
    ]
    write_shard(tmp_path / TRAIN, train)
    write_shard(tmp_path / TEST, [make_row(6), {**dup, "id": 41}, make_row(7, label=3)])
    result = ingest(tmp_path, _config())
    m = result.metrics
    assert m["rows_read"] == 10
    assert (m["rows_indexed"], m["quarantined"], m["duplicates_collapsed"]) == (5, 3, 2)
    assert m["rows_read"] == m["rows_indexed"] + m["quarantined"] + m["duplicates_collapsed"]
    assert m["rows_valid"] == m["rows_indexed"] + m["duplicates_collapsed"]
    assert m["repaired_rows"] == 3
    assert m["repairs_by_field"] == {"gps": 3, "scene_level_tags.weather": 1}
    assert m["quarantined_by_reason"] == {
        "gps_invalid": 1, "image_undecodable": 1, "label_invalid": 1, "label_missing": 1
    }  # fmt: skip
    assert result.repairs.select("row", "field").rows() == [
        (1, "gps"), (1, "scene_level_tags.weather"), (2, "gps"), (5, "gps")
    ]  # fmt: skip
    assert result.collapsed.select("shard", "row", "source_id", "image_id").rows() == [
        (TRAIN, 4, 4, _sha(dup)), (TRAIN, 5, 40, _sha(dup))
    ]  # fmt: skip
    kept = {(r["shard"], r["row"]) for r in result.index.iter_rows(named=True)}
    quarantined = set(result.quarantine.select("shard", "row").rows())
    collapsed = set(result.collapsed.select("shard", "row").rows())
    every_row = {(TRAIN, r) for r in range(7)} | {(TEST, r) for r in range(3)}
    assert kept | quarantined | collapsed == every_row
    assert len(kept) + len(quarantined) + len(collapsed) == len(every_row)


def test_image_over_the_pixel_limit_is_quarantined(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images, "MAX_PIXELS", 64 * 48 - 1)
    # A PNG decodes at full size: refused from its header. A JPEG of the same size decodes at 1/8 here.
    rows = [make_row(0, image=jpeg_bytes(64, 48, fmt="PNG")), make_row(1)]
    write_shard(tmp_path / TRAIN, rows)
    result = ingest(tmp_path, _config())
    assert result.index["row"].to_list() == [1]
    assert result.quarantine.select("row", "field", "reason").rows() == [(0, "image", "image_too_large")]
    assert "64x48 (0.0 MP to decode): over the limit" in result.quarantine["detail"][0]


def test_truncated_jpeg_opens_but_does_not_decode() -> None:
    # The case above is only meaningful if the header alone would pass.
    with Image.open(io.BytesIO(truncated_jpeg())) as im:
        assert im.size == (160, 120)
        with pytest.raises(OSError, match="truncated"):
            im.load()


def test_row_with_several_faults_gets_one_entry_each(tmp_path: Path) -> None:
    write_shard(tmp_path / TRAIN, [make_row(0), make_row(1, label=None, gps="[0, 500]", image=NOT_AN_IMAGE)])
    result = ingest(tmp_path, _config())
    reasons = sorted(result.quarantine["reason"].to_list())
    assert reasons == ["gps_invalid", "image_undecodable", "label_missing"]  # optional faults too
    assert result.metrics["quarantined"] == 1
    assert result.index.height == 1
    assert result.repairs.height == 0  # a quarantined row is not repaired


def test_unlabelled_split_allows_a_null_label(tmp_path: Path) -> None:
    write_shard(tmp_path / TRAIN, [make_row(0)])
    challenge_rows = [make_row(1, label=None), make_row(2, label=7)]
    write_shard(tmp_path / "data/challenge-00000-of-00001.parquet", challenge_rows)
    result = ingest(tmp_path, _config())
    challenge = result.index.filter(pl.col("split") == "challenge")
    assert challenge["label"].to_list() == [None]
    assert result.quarantine.select("row", "reason").rows() == [(1, "label_invalid")]
    assert result.metrics["splits"]["challenge"] == {
        "rows_read": 2, "rows_indexed": 1, "label_0": 0, "label_1": 0, "label_null": 1
    }  # fmt: skip


def test_wrong_types_in_required_columns_are_cast_or_quarantined(tmp_path: Path) -> None:
    rows = [make_row(0, label="1"), make_row(1, label="yes"), make_row(2, label="0", id=2.0),
            make_row(3, label="1", id=3.5)]  # fmt: skip
    write_shard(tmp_path / TRAIN, rows, types={"label": pa.string(), "id": pa.float64(), "width": pa.int32()})
    result = ingest(tmp_path, _config())
    assert result.index.select("row", "label", "source_id").rows() == [(0, 1, 0), (2, 0, 2)]
    assert result.quarantine.select("row", "field", "reason").rows() == [
        (1, "label", "wrong_type"),
        (3, "id", "wrong_type"),
    ]
    assert "'yes' (string) does not convert to int64" in result.quarantine["detail"][0]
    assert result.metrics["quarantined_by_reason"] == {"wrong_type": 2}
    assert result.repairs.height == 0  # width is int32 in the file: it casts losslessly


def test_missing_optional_columns_become_nulls(tmp_path: Path) -> None:
    write_shard(tmp_path / TRAIN, [make_row(0), make_row(1)], drop=["gps", "scene_description", "width"])
    write_shard(tmp_path / TEST, [make_row(3)], drop=["gps"])  # a row with a scene description
    result = ingest(tmp_path, _config())
    assert result.index["lat"].null_count() == 3
    assert result.metrics["missing_optional_columns"] == {"width": 1, "gps": 2, "scene_description": 1}
    assert result.metrics["nulls"] == {"gps": 3, "scene_description": 2, "vid_id": 3}
    assert result.metrics["size_mismatch"] == 0


def test_all_rows_bad_fails(tmp_path: Path) -> None:
    write_shard(tmp_path / TRAIN, [make_row(0, label=None)])
    with pytest.raises(IngestError, match="no valid rows"):
        ingest(tmp_path, _config())


# --- duplicates, groups, order ---------------------------------------------------------------------


def test_duplicates_collapse_and_test_copy_wins(tmp_path: Path) -> None:
    shared, inner = make_row(5), make_row(6)
    write_shard(tmp_path / TRAIN, [make_row(0), shared, inner, {**inner, "id": 60}, {**shared, "id": 50}])
    write_shard(tmp_path / TEST, [make_row(1), {**shared, "id": 51, "label": 0}])
    result = ingest(tmp_path, _config())
    index = result.index
    assert index.height == 4
    kept = index.filter(pl.col("image_id") == _sha(shared)).row(0, named=True)
    assert (kept["split"], kept["row"], kept["source_id"], kept["duplicates"]) == ("test", 1, 51, 3)
    inner_kept = index.filter(pl.col("image_id") == _sha(inner)).row(0, named=True)
    assert (inner_kept["split"], inner_kept["row"], inner_kept["duplicates"]) == ("train", 2, 2)
    assert index["image_id"].n_unique() == index.height
    assert result.metrics["duplicates_collapsed"] == 3
    assert result.metrics["cross_split_duplicates"] == {"count": 1, "image_ids": [_sha(shared)]}
    assert result.metrics["duplicate_label_conflicts"] == 1  # shared: label 1 in train, 0 in test


def test_split_ranking_follows_labelled_splits(tmp_path: Path) -> None:
    shared = make_row(3)
    write_shard(tmp_path / TRAIN, [make_row(0), shared])
    write_shard(tmp_path / TEST, [shared])
    write_shard(tmp_path / "data/challenge-00000-of-00001.parquet", [make_row(1), shared])
    index = ingest(tmp_path, _config()).index
    # unlabelled splits outrank every labelled one
    assert index.filter(pl.col("image_id") == _sha(shared))["split"].to_list() == ["challenge"]
    (tmp_path / "data/challenge-00000-of-00001.parquet").unlink()
    reversed_rank = ingest(tmp_path, _config(labelled=("test", "train"))).index
    assert reversed_rank.filter(pl.col("image_id") == _sha(shared))["split"].to_list() == ["train"]


def test_group_keys(tmp_path: Path) -> None:
    rows = [
        make_row(0, gps="[39.775, -86.155]", **{"video_info.vid_id": "v1"}),
        make_row(1, gps="[39.775, -86.155]", **{"video_info.vid_id": "  "}),  # blank id: use the GPS
        make_row(2, gps="[39.77, -86.15]"),  # on the cell edges
        make_row(3, gps=None),
        make_row(4, gps="[]"),
    ]
    write_shard(tmp_path / TRAIN, rows)
    index = ingest(tmp_path, _config(cell=0.01)).index
    assert index["group"].to_list() == [
        "vid:v1", "gps:3977,-8616", "gps:3977,-8615", f"img:{_sha(rows[3])}", f"img:{_sha(rows[4])}"
    ]  # fmt: skip
    coarse = ingest(tmp_path, _config(cell=0.5)).index
    assert coarse["group"][1] == f"gps:{math.floor(39.775 / 0.5)},{math.floor(-86.155 / 0.5)}"
    assert coarse["group"][1] == "gps:79,-173"


def test_index_is_sorted_by_split_shard_row(tmp_path: Path) -> None:
    write_shard(tmp_path / "data/train-00001-of-00002.parquet", [make_row(0), make_row(1)])
    write_shard(tmp_path / "data/train-00000-of-00002.parquet", [make_row(2)])
    write_shard(tmp_path / TEST, [make_row(3)])
    index = ingest(tmp_path, _config()).index
    assert index.select("split", "shard", "row").rows() == [
        ("test", TEST, 0),
        ("train", "data/train-00000-of-00002.parquet", 0),
        ("train", "data/train-00001-of-00002.parquet", 0),
        ("train", "data/train-00001-of-00002.parquet", 1),
    ]


def test_workers_do_not_change_results(tmp_path: Path) -> None:
    rows = [make_row(i) for i in range(9)] + [make_row(9, image=truncated_jpeg()), make_row(10, label=None)]
    write_shard(tmp_path / "data/train-00000-of-00002.parquet", rows[:6], row_group_size=2)
    write_shard(tmp_path / "data/train-00001-of-00002.parquet", [*rows[6:], rows[0]], row_group_size=3)
    write_shard(tmp_path / TEST, [rows[1], make_row(11)])
    one, two = ingest(tmp_path, _config(workers=1)), ingest(tmp_path, _config(workers=2))
    assert one.index.height == 10 and one.quarantine.height == 2
    assert one.index.equals(two.index)
    assert one.quarantine.equals(two.quarantine)
    assert one.metrics == two.metrics


# --- prepared files --------------------------------------------------------------------------------


def test_write_and_read_prepared(tmp_path: Path) -> None:
    write_shard(tmp_path / "raw" / TRAIN, [make_row(0), make_row(1), make_row(2, gps="bad")])
    result = ingest(tmp_path / "raw", _config())
    write_prepared(result, tmp_path / "prepared")
    index = read_index(tmp_path / "prepared")
    assert index.equals(result.index)
    assert pl.read_parquet(tmp_path / "prepared" / "quarantine.parquet").equals(result.quarantine)
    repairs = pl.read_parquet(tmp_path / "prepared" / "repairs.parquet")
    assert repairs.equals(result.repairs) and repairs.select("row", "field", "value").rows() == [
        (2, "gps", "bad")
    ]
    result.index.drop("group").write_parquet(tmp_path / "prepared" / "index.parquet")
    with pytest.raises(IndexFileError, match=r"prepared/index\.parquet: column 'group' is missing"):
        read_index(tmp_path / "prepared")
    with pytest.raises(IndexFileError, match="index not found"):
        read_index(tmp_path / "elsewhere")


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="gps_cell_deg"):
        _config(cell=0.0)
    with pytest.raises(ValueError, match="workers"):
        _config(workers=0)


# --- the stage -------------------------------------------------------------------------------------


def test_stage_writes_outputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from stages import ingest as stage

    params = load_params(Path(__file__).parents[1] / "params.yaml")
    params["paths"].update(raw="raw", prepared="out/prepared", metrics="out/metrics")
    params["ingest"].update(workers=1)
    write_params(tmp_path, params)
    write_shard(tmp_path / "raw" / TRAIN, [make_row(0), make_row(1, label=None)])
    write_shard(tmp_path / "raw" / TEST, [make_row(2, gps="[1000, 0]")])
    monkeypatch.chdir(tmp_path)
    stage.main()
    assert read_index(tmp_path / "out/prepared").height == 2
    quarantine = pl.read_parquet(tmp_path / "out/prepared/quarantine.parquet")
    assert quarantine["reason"].to_list() == ["label_missing"]
    repairs = pl.read_parquet(tmp_path / "out/prepared/repairs.parquet")
    assert repairs.select("split", "field", "reason", "value").rows() == [
        ("test", "gps", "gps_invalid", "[1000, 0]")
    ]
    saved = json.loads((tmp_path / "out/prepared/ingest_config.json").read_text())
    assert saved == {"gps_cell_deg": 0.01, "labelled_splits": ["train", "test"], "workers": 1}
    metrics = json.loads((tmp_path / "out/metrics/ingest.json").read_text())
    assert (metrics["rows_read"], metrics["rows_indexed"], metrics["quarantined"]) == (3, 2, 1)
    assert (metrics["repaired_rows"], metrics["repairs_by_field"]) == (1, {"gps": 1})
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "3 rows" in out[0] and "2 indexed" in out[0] and "1 quarantined" in out[0]
    assert "(1 with fields set to NULL: gps 1)" in out[0]
