"""The prepared index: one row per unique image, in `roadwork.data.schema.INDEX_SCHEMA`.

Written by `ingest`; read by every stage after it. Kept apart from the ingest logic so that readers
depend only on this small module.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from roadwork.data import schema

INDEX_FILE = "index.parquet"
QUARANTINE_FILE = "quarantine.parquet"
REPAIRS_FILE = "repairs.parquet"


class IndexFileError(ValueError):
    """A missing or malformed prepared index."""


def read_index(prepared_dir: Path) -> pl.DataFrame:
    """Read `<prepared_dir>/index.parquet`, checking every INDEX_SCHEMA column and its type."""
    path = Path(prepared_dir) / INDEX_FILE
    if not path.is_file():
        raise IndexFileError(f"{path}: index not found (run the ingest stage)")
    index = pl.read_parquet(path)
    expected = pl.from_arrow(schema.INDEX_SCHEMA.empty_table())
    assert isinstance(expected, pl.DataFrame)
    for name, dtype in expected.schema.items():
        if name not in index.columns:
            raise IndexFileError(f"{path}: column {name!r} is missing (a stale index? re-run ingest)")
        if index.schema[name] != dtype:
            raise IndexFileError(f"{path}: column {name!r} has type {index.schema[name]}, expected {dtype}")
    return index.select(schema.INDEX_SCHEMA.names)


def rows_for(index: pl.DataFrame, image_ids: list[str], where: str) -> pl.DataFrame:
    """Index rows for `image_ids`, in that order; every id must be in the index (`where` names the
    file the ids came from, for the error)."""
    rows = pl.DataFrame({"image_id": image_ids}).join(index, on="image_id", how="left", maintain_order="left")
    if rows["split"].null_count():
        missing = rows.filter(pl.col("split").is_null())["image_id"][0]
        raise ValueError(f"{where}: image {missing!r} is not in the index; re-run the train stages")
    return rows
