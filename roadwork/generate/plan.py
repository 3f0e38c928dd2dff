"""The generate plan: one row per image to generate, from the labelled rows of the `train` split.

A source row gets a task when a hash of (seed, task, image id) falls under the task's fraction, so
adding source rows never changes the choices made for the others; its generated row's seed, new id
and prompt are functions of the same key. The plan is ordered by the source's dataset id (then image
id, task): a dataset that grows by new ids appends to the plan, and the earlier output shards keep
exactly their rows. It is never drawn from the test split.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from roadwork.generate.config import MODEL_SYNTHETIC, GenerateConfig
from roadwork.generate.prompts import prompt_for
from roadwork.generate.synthetic import SyntheticWorld

SOURCE_SPLIT = "train"
TASKS = ("i2i", "t2i")
PLAN_SCHEMA = pa.schema(
    [
        ("id", pa.int64()),  # the generated row's dataset id (a hash: unique, stable as the plan grows)
        ("task", pa.string()),  # i2i | t2i
        ("seed", pa.int64()),  # the generated row's seed: noise, style, layout, prompt wording
        ("label", pa.int64()),  # the source's label, which the generated image keeps
        ("prompt", pa.string()),  # the validator-style prompt (`prompts.prompt_for`)
        ("source_image_id", pa.string()),  # the source row in the index
        ("source_id", pa.int64()),  # the source row's dataset `id`
        ("source_description", pa.string()),
        ("source_shard", pa.string()),  # where the source image's bytes are (relative to the raw root)
        ("source_row", pa.int64()),
        ("source_width", pa.int64()),  # the source's displayed size
        ("source_height", pa.int64()),
        ("shard", pa.int64()),  # output shard number
    ]
)
_MASK63 = (1 << 63) - 1  # ids and seeds are non-negative int64


def key_hash(seed: int, key: str) -> int:
    """A non-negative 63-bit integer from a seed and a key: the same in every run, process and order."""
    digest = hashlib.sha256(f"{int(seed)}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & _MASK63


def chosen(seed: int, task: str, image_id: str, fraction: float) -> bool:
    """Whether source image `image_id` gets `task`: a uniform draw from the hash, under `fraction`."""
    return key_hash(seed, f"{task}/choose/{image_id}") / (_MASK63 + 1) < fraction


def sources(index: pl.DataFrame) -> pl.DataFrame:
    """The labelled rows of the training split: what may be generated from (never the test split)."""
    return index.filter((pl.col("split") == SOURCE_SPLIT) & pl.col("label").is_not_null())


def _job(row: dict[str, Any], task: str, config: GenerateConfig) -> dict[str, Any]:
    key = f"{task}/{row['image_id']}"
    seed = key_hash(config.seed, f"seed/{key}")
    return {
        "id": key_hash(config.seed, f"id/{key}"),
        "task": task,
        "seed": seed,
        "label": int(row["label"]),
        "prompt": prompt_for(row["scene_description"], int(row["label"]), np.random.default_rng([seed, 0])),
        "source_image_id": row["image_id"],
        "source_id": row["source_id"],
        "source_description": row["scene_description"],
        "source_shard": row["shard"],
        "source_row": row["row"],
        "source_width": row["width"],
        "source_height": row["height"],
    }


def _mapped(world: SyntheticWorld, row: dict[str, Any]) -> bool:
    return world.unit_of(row["source_id"], row["label"], (row["width"], row["height"])) is not None


def build_plan(
    index: pl.DataFrame, config: GenerateConfig, world: SyntheticWorld | None = None
) -> tuple[pl.DataFrame, dict[str, int]]:
    """The plan (PLAN_SCHEMA, in shard order) and counters: sources, and, for the synthetic stand-in,
    the image-to-image sources skipped because the synth config did not render them (`unmapped`)."""
    rows = sources(index).sort("source_id", "image_id", nulls_last=True).to_dicts() if config.enabled else []
    fractions = {"i2i": config.i2i_fraction, "t2i": config.t2i_fraction}
    jobs, unmapped = [], 0
    for row in rows:
        for task in TASKS:
            if not chosen(config.seed, task, row["image_id"], fractions[task]):
                continue
            if task == "i2i" and world is not None and not _mapped(world, row):
                unmapped += 1
                continue
            jobs.append(_job(row, task, config))
    if unmapped and config.model == MODEL_SYNTHETIC and not any(j["task"] == "i2i" for j in jobs):
        raise ValueError(
            f"generate.model=synthetic: none of the {unmapped} image-to-image sources is a row the synth "
            "config renders (is paths.raw the synthetic dataset, made with this synth section?)"
        )
    for position, job in enumerate(jobs):
        job["shard"] = position // config.shard_rows
    plan = pl.from_arrow(pa.Table.from_pylist(jobs, schema=PLAN_SCHEMA))
    assert isinstance(plan, pl.DataFrame)
    if plan["id"].n_unique() != plan.height:  # 63-bit hashes: a collision is a bug, not bad luck
        raise RuntimeError("generate: two planned rows drew the same id")
    return plan, {"sources": len(rows), "unmapped": unmapped}
