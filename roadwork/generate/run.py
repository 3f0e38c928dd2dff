"""The `generate` stage's work: the plan drawn shard by shard into a NATIX-schema dataset.

Output, under `out_root`:
- `data/train-000NN-of-000MM.parquet`: the NATIX columns (`schema.RAW_SCHEMA`, its encodings; the
  project's ingest indexes it) plus the provenance columns `generated.*`. A generated row carries its
  own id and size, the source's label, the prompt (text-to-image) or the source's description
  (image-to-image), and no other metadata: a validator sends none.
- `plan.arrow`: the plan (`plan.PLAN_SCHEMA`). Arrow, not parquet, like synth's truth table: ingest
  takes every *.parquet under the dataset root for a shard.
- `generate_config.json`: the resolved config.

Each shard is written under a hidden temporary name and renamed when complete, and its footer records
a digest of its plan rows and of everything else its bytes depend on (model, knobs, code version). A
run keeps every shard whose digest is the plan's (renaming it when the shard count changed), deletes
the others and draws what is missing: a killed run resumes at its first missing shard, a grown plan
draws only its new shards, and either ends byte-identical to an uninterrupted run. Under torchrun,
shard k is rank k mod world's, and a rank touches no other file than its own shards': the ranks need
no barrier until the end. `model: none` leaves an empty dataset (no shard, an empty plan).
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
from PIL import Image

from roadwork.config import save_resolved, to_dict
from roadwork.data.images import ShardReader, decode
from roadwork.data.ingest import IngestConfig, IngestError, ingest
from roadwork.data.schema import RAW_SCHEMA, shard_name
from roadwork.device import resolve_device
from roadwork.distributed import SINGLE, Ranks, rank_device
from roadwork.generate.config import MODEL_SYNTHETIC, GenerateConfig
from roadwork.generate.plan import PLAN_SCHEMA, SOURCE_SPLIT, TASKS, build_plan
from roadwork.generate.sdxl import draw, load_pipelines, model_fingerprint, redraw
from roadwork.generate.synthetic import SyntheticWorld, scene_for
from roadwork.progress import progress
from roadwork.synth.dataset import SynthConfig, init_worker

DATA_DIR = "data"
PLAN_FILE = "plan.arrow"
CONFIG_FILE = "generate_config.json"
# Bump when the bytes drawn for the same plan row change: every shard is then drawn again.
GENERATE_VERSION = 1
DIGEST_KEY = b"roadwork.generate"  # parquet footer key: {"digest": ...} of the shard
LOCATORS = ("source_shard", "source_row")  # plan columns that say where, not what
_ROW_GROUP = 100  # rows per parquet row group, as the hub writes image datasets
PROVENANCE = [
    pa.field("generated.source_id", pa.int64()),  # the source row's dataset `id`
    pa.field("generated.task", pa.string()),  # i2i | t2i
    pa.field("generated.seed", pa.int64()),  # the seed the image was drawn with
    pa.field("generated.model", pa.string()),  # generate.model: synthetic, a hub id or a directory
]
_FEATURES = {
    field.name: {"_type": "Image"} if field.name == "image" else {"dtype": str(field.type), "_type": "Value"}
    for field in [*RAW_SCHEMA, *PROVENANCE]
}
# Hugging Face `datasets` feature metadata covering the provenance columns too, as the hub would write.
SCHEMA = pa.schema([*RAW_SCHEMA, *PROVENANCE]).with_metadata(
    {b"huggingface": json.dumps({"info": {"features": _FEATURES}}).encode()}
)
_FILE = re.compile(rf"^(?P<tmp>\.)?{SOURCE_SPLIT}-(?P<index>\d{{5}})-of-\d{{5}}\.parquet(?(tmp)\.tmp)$")

Drawer = Callable[[dict[str, Any], ShardReader], Image.Image]  # one plan row -> its image


@dataclass(frozen=True)
class Shard:
    """One output shard: its number, file name, digest and plan rows."""

    index: int
    name: str
    digest: str
    rows: pl.DataFrame


def generator_key(config: GenerateConfig, synth: SynthConfig | None) -> dict[str, Any]:
    """What a shard's bytes depend on besides its plan rows: the model (for a directory, a fingerprint
    of its files: a checkpoint replaced in place draws again), the knobs, the code version; not the
    device or the shard size."""
    knobs = ("model", "strength", "guidance", "steps", "t2i_size", "i2i_max_side", "dtype", "jpeg_quality")
    key: dict[str, Any] = {"version": GENERATE_VERSION, **{k: getattr(config, k) for k in knobs}}
    if config.model == MODEL_SYNTHETIC:
        key["synth"] = to_dict(synth)
    elif config.enabled:
        key["weights"] = model_fingerprint(config.model)
    return key


def plan_shards(plan: pl.DataFrame, key: dict[str, Any]) -> list[Shard]:
    """The plan cut into its shards, each with the digest of its rows and `key`. Where a source's bytes
    sit (shard, row) is left out: the hub renames every shard when one is added, the image is the same."""
    parts = plan.partition_by("shard", maintain_order=True) if plan.height else []
    shards = []
    for part in parts:
        index = int(part["shard"][0])
        rows = part.drop("shard", *LOCATORS).to_dicts()
        text = json.dumps({"key": key, "rows": rows}, sort_keys=True, default=str)
        digest = hashlib.sha256(text.encode()).hexdigest()
        shards.append(Shard(index, shard_name(SOURCE_SPLIT, index, len(parts)), digest, part))
    return shards


def _digest(path: Path) -> str | None:
    """The digest a complete shard recorded in its footer; None for anything else."""
    try:
        metadata = pq.read_schema(path).metadata or {}
        return json.loads(metadata[DIGEST_KEY])["digest"]
    except (OSError, KeyError, ValueError, pa.ArrowException):
        return None


def reconcile(data_dir: Path, shards: list[Shard], ranks: Ranks) -> set[int]:
    """Keep this rank's complete shards that match the plan (renamed to the plan's names), delete its
    other files (stale shards, unfinished writes); returns the numbers of the shards kept."""
    found: dict[int, list[Path]] = {}
    for path in sorted(data_dir.iterdir()):
        match = _FILE.match(path.name)
        if match and int(match["index"]) % ranks.world == ranks.rank:
            found.setdefault(int(match["index"]), []).append(path)
    kept = set()
    for index, paths in found.items():
        want = shards[index] if index < len(shards) else None
        complete = [p for p in paths if not p.name.startswith(".")]  # hidden: an unfinished write
        good = next((p for p in complete if want and _digest(p) == want.digest), None)
        for path in paths:
            if path != good:
                path.unlink()
        if good is not None and want is not None:
            good.rename(data_dir / want.name)
            kept.add(index)
    return kept


def _jpeg(image: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def output_row(job: dict[str, Any], image: Image.Image, config: GenerateConfig) -> dict[str, Any]:
    """A generated row in the output schema; the columns it does not set are NULL."""
    return {
        "image": {"bytes": _jpeg(image, config.jpeg_quality), "path": f"{job['id']}.jpg"},
        "id": job["id"],
        "width": image.width,
        "height": image.height,
        "scene_description": job["prompt"] if job["task"] == "t2i" else job["source_description"],
        "label": job["label"],
        "generated.source_id": job["source_id"],
        "generated.task": job["task"],
        "generated.seed": job["seed"],
        "generated.model": config.model,
    }


def write_shard(rows: list[dict[str, Any]], path: Path, digest: str) -> None:
    """Write a shard under a hidden temporary name, then rename it: a complete file or none."""
    metadata = {**SCHEMA.metadata, DIGEST_KEY: json.dumps({"digest": digest}).encode()}
    table = pa.Table.from_pylist(rows, schema=SCHEMA.with_metadata(metadata))
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp, row_group_size=_ROW_GROUP)
    os.replace(tmp, path)


def sdxl_drawer(config: GenerateConfig, device: Any) -> Drawer:
    """Plan rows drawn by the SDXL pipelines of `config.model`."""
    pipes = load_pipelines(config.model, device, config.dtype)

    def draw_row(job: dict[str, Any], reader: ShardReader) -> Image.Image:
        if job["task"] == "t2i":
            return draw(pipes, job["prompt"], job["seed"], config)
        # Decoded at reduced scale where the input is shrunk anyway (JPEG DCT scaling).
        scale = min(1.0, config.i2i_max_side / max(job["source_width"], job["source_height"]))
        image, _ = decode(reader.read(job["source_shard"], job["source_row"]), min_side_scale=scale)
        return redraw(pipes, image, job["prompt"], job["seed"], config)

    return draw_row


def synthetic_drawer(world: SyntheticWorld) -> Drawer:
    """Plan rows drawn by the synthetic world (no image bytes are read)."""

    def draw_row(job: dict[str, Any], reader: ShardReader) -> Image.Image:
        size = (job["source_width"], job["source_height"])
        if job["task"] == "t2i":
            words = scene_for(job["source_description"], job["prompt"])
            return world.draw(words, job["label"], size, job["seed"])
        found = world.unit_of(job["source_id"], job["label"], size)
        assert found is not None, "the plan holds mapped image-to-image rows only"
        return world.redraw(*found, job["seed"])

    return draw_row


def _draw_shard(
    shard: Shard, drawer: Drawer, reader: ShardReader, data_dir: Path, config: GenerateConfig
) -> int:
    """Draw one shard's rows and write it; its row count."""
    rows = [output_row(job, drawer(job, reader), config) for job in shard.rows.iter_rows(named=True)]
    write_shard(rows, data_dir / shard.name, shard.digest)
    return len(rows)


def _synthetic_shard(job: tuple[Shard, ShardReader, Path, GenerateConfig, SynthConfig]) -> int:
    shard, reader, data_dir, config, synth = job
    return _draw_shard(shard, synthetic_drawer(SyntheticWorld(synth)), reader, data_dir, config)


def _synthetic_pool(
    todo: list[Shard], reader: ShardReader, data_dir: Path, config: GenerateConfig, synth: SynthConfig
) -> Iterator[int]:
    """The synthetic stand-in's shards drawn by `config.workers` processes, each writing its own shard
    files; yields each shard's row count, in order."""
    ctx = multiprocessing.get_context("spawn")  # safe whatever thread pools the parent has started
    with ProcessPoolExecutor(config.workers, mp_context=ctx, initializer=init_worker) as pool:
        yield from pool.map(_synthetic_shard, [(s, reader, data_dir, config, synth) for s in todo])


def _write_outline(out_root: Path, plan: pl.DataFrame, config: GenerateConfig) -> None:
    """The plan and the resolved config (rank 0), each written whole or not at all."""
    tmp = out_root / f".{PLAN_FILE}.tmp"
    feather.write_feather(plan.to_arrow().cast(PLAN_SCHEMA), tmp)
    os.replace(tmp, out_root / PLAN_FILE)
    save_resolved(config, out_root / CONFIG_FILE)


def run_generate(
    *,
    index: pl.DataFrame,
    raw_root: Path,
    out_root: Path,
    config: GenerateConfig,
    synth: SynthConfig | None,
    ranks: Ranks = SINGLE,
) -> dict[str, Any]:
    """This rank's share of the `generate` stage: plan, keep what is done, draw the rest; counters."""
    if config.model == MODEL_SYNTHETIC and synth is None:
        raise ValueError("generate.model=synthetic: needs the synth section (the synthetic world's config)")
    out_root, started = Path(out_root), time.perf_counter()
    data_dir = out_root / DATA_DIR
    data_dir.mkdir(parents=True, exist_ok=True)
    world = SyntheticWorld(synth) if synth is not None and config.model == MODEL_SYNTHETIC else None
    plan, counts = build_plan(index, config, world)
    shards = plan_shards(plan, generator_key(config, synth))
    if ranks.rank == 0:
        _write_outline(out_root, plan, config)
    kept = reconcile(data_dir, shards, ranks)
    todo = [s for s in shards if s.index % ranks.world == ranks.rank and s.index not in kept]
    counts |= {task: int((plan["task"] == task).sum()) for task in TASKS}
    counts |= {"planned": plan.height, "shards": len(shards), "shards_kept": len(kept)}
    counts |= {"shards_written": 0, "images": 0}
    if todo:
        loading = time.perf_counter()
        device = rank_device(resolve_device(config.device), ranks)
        drawer = synthetic_drawer(world) if world is not None else sdxl_drawer(config, device)
        drawing = time.perf_counter()
        counts["load_seconds"] = round(drawing - loading, 2)
        total, reader = sum(s.rows.height for s in todo), ShardReader(raw_root)
        if world is not None and config.workers > 1 and len(todo) > 1:
            written = _synthetic_pool(todo, reader, data_dir, config, world.synth)
        else:
            written = (_draw_shard(s, drawer, reader, data_dir, config) for s in todo)
        for rows in progress(written, total=total, desc="generate", unit="img", count=lambda n: n):
            counts["shards_written"] += 1
            counts["images"] += rows
        counts["seconds_per_image"] = round((time.perf_counter() - drawing) / counts["images"], 4)
    counts["seconds"] = round(time.perf_counter() - started, 2)
    return counts


INDEX_FILE = "index.arrow"  # the generated rows as the prepared index has them (not parquet: see PLAN_FILE)


def index_generated(out_root: Path, index: pl.DataFrame, config: IngestConfig) -> pl.DataFrame:
    """The generated dataset under `out_root` indexed by the project's own ingest (empty when nothing
    was generated), each row with its source's `source_image_id` and `group`: a generated image goes
    wherever its source goes (never into a validation fold its source is held out of)."""
    columns = {**dict.fromkeys(index.columns), "source_image_id": None}
    if not any((Path(out_root) / DATA_DIR).glob("*.parquet")):
        return pl.DataFrame(schema={**index.schema, "source_image_id": pl.String}).select(list(columns))
    result = ingest(Path(out_root), config, require_rows=False)
    if len(result.quarantine):
        first = result.quarantine.row(0, named=True)
        raise IngestError(f"{out_root}: {len(result.quarantine)} generated row(s) quarantined, e.g. {first}")
    plan = pl.from_arrow(feather.read_table(Path(out_root) / PLAN_FILE)).select("id", "source_image_id")
    groups = index.select(pl.col("image_id").alias("source_image_id"), "group")
    rows = result.index.drop("group").join(plan, left_on="source_id", right_on="id", how="left")
    missing = rows.filter(pl.col("source_image_id").is_null())
    if len(missing):
        raise IngestError(f"{out_root}: generated id {missing['source_id'][0]} is not in {PLAN_FILE}")
    return rows.join(groups, on="source_image_id", how="left").select(list(columns))


def read_generated(out_root: Path) -> pl.DataFrame | None:
    """The generated rows' index written by the `generate` stage; None when there is none."""
    path = Path(out_root) / INDEX_FILE
    if not path.is_file():
        return None
    frame = pl.from_arrow(feather.read_table(path))
    assert isinstance(frame, pl.DataFrame)
    return frame if len(frame) else None
