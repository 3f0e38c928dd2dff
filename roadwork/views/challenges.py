"""Validator-style challenge sets: balanced labels, one JPEG per image and protocol, no metadata.

A challenge set has two parts: `val` (cut from the validation rows: for choosing members, ensemble,
threshold and calibration) and `test` (cut from the labelled test split: for scoring only). Each part
has up to two domains: `real` (the dataset's own images) and `generated` (re-drawn images of the same
kinds of scene: on real data a folder or NATIX-schema dataset the user supplies, on the embedded default
the synthetic world's second style, a stand-in for the validator's SDXL half). Within each (part, domain)
the labels are balanced by drawing as many images of the rarer label from the commoner one; the same
images are cut under every protocol of `validate.protocols` (crop, letterbox, native: shared
VALIDATOR.md), so protocols compare on paired images. Under `crop` and `letterbox` each image gets one
level, uniform over 0-3; `native` has none. Everything is a function of `challenge.seed` and the image
ids: the same inputs give the same files.

The table (`challenges.parquet`) has one row per challenge: `file` (relative to the challenge folder),
`part`, `protocol`, `domain`, `image_id` (of the source image), `source_id`, `level` (null under
`native`), `label`, `group` (the source's video / GPS group: frames of one video are resampled together
in bootstraps).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from itertools import repeat
from pathlib import Path

import numpy as np
import polars as pl

from roadwork.config import ConfigError
from roadwork.data.images import ShardReader, displayed_size
from roadwork.data.ingest import IngestConfig, ingest
from roadwork.views.protocols import LEVELS, challenge_rng, check_protocol, protocol_jpeg

PARTS = ("val", "test")
TABLE_FILE = "challenges.parquet"
LABEL_DIRS = {"roadwork": 1, "none": 0}  # a generated folder: <root>/<part>/<roadwork|none>/*.jpg
COLUMNS = ("file", "part", "protocol", "domain", "image_id", "source_id", "level", "label", "group")


@dataclasses.dataclass(frozen=True)
class ChallengeConfig:
    """params.yaml `challenge:`."""

    seed: int  # which images, which level, every random draw of the transforms
    max_per_domain: int | None  # challenges per (part, domain) at most; null: 2 x the rarer label's count

    def __post_init__(self) -> None:
        if self.max_per_domain is not None and (self.max_per_domain < 2 or self.max_per_domain % 2):
            raise ConfigError(f"challenge.max_per_domain={self.max_per_domain}: expected an even int >= 2")


def balanced(rows: pl.DataFrame, cap: int | None, rng: np.random.Generator) -> pl.DataFrame:
    """As many roadwork as non-roadwork rows (the rarer label's count, at most cap / 2 each), drawn
    without replacement, in image-id order (so the draw does not depend on the rows' order)."""
    rows = rows.filter(pl.col("label").is_not_null()).sort("image_id")
    pos, neg = rows.filter(pl.col("label") == 1), rows.filter(pl.col("label") == 0)
    n = min(len(pos), len(neg), cap // 2 if cap else len(rows))
    pick = [frame[np.sort(rng.choice(len(frame), n, replace=False))] for frame in (pos, neg)]
    return pl.concat(pick).sort("image_id")


def challenge_rows(
    rows: pl.DataFrame, *, part: str, domain: str, protocols: tuple[str, ...], config: ChallengeConfig
) -> pl.DataFrame:
    """The challenges of one (part, domain): balanced rows (the same under every protocol), a level each
    under `crop` and `letterbox`, their file names."""
    picked = balanced(rows, config.max_per_domain, challenge_rng(config.seed, f"sample/{part}/{domain}"))
    tables = []
    for protocol in map(check_protocol, protocols):
        levels = challenge_rng(config.seed, f"levels/{part}/{protocol}/{domain}").integers(
            0, len(LEVELS), len(picked)
        )
        tables.append(
            picked.with_columns(
                file=pl.format("{}/{}/{}/{}.jpg", pl.lit(part), pl.lit(protocol), pl.lit(domain), "image_id"),
                part=pl.lit(part),
                protocol=pl.lit(protocol),
                domain=pl.lit(domain),
                level=pl.Series([None] * len(picked) if protocol == "native" else levels, dtype=pl.Int8),
                label=pl.col("label").cast(pl.Int8),
            ).select(COLUMNS)
        )
    return pl.concat(tables)


def _challenge_jpeg(data: bytes, file: str, protocol: str, level: int | None, seed: int) -> bytes:
    rng = challenge_rng(seed, f"transform/{file}")
    return protocol_jpeg(data, displayed_size(data), protocol=protocol, level=level or 0, rng=rng)


def write_challenges(
    table: pl.DataFrame, read: Callable[[str], bytes], out_dir: Path, seed: int, workers: int = 2
) -> None:
    """Each challenge's JPEG under `out_dir` (`read(image_id)` gives its source image's bytes). Sources
    are read in order, 32 at a time (readers cache row groups unlocked, and full-size photos are large);
    the transforms run on `workers` threads (decoding, torch, OpenCV and JPEG encoding release the GIL),
    each challenge with its own generator, so the files are the same bytes whatever the order."""
    rows = table.select("file", "image_id", "protocol", "level").rows()
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for start in range(0, len(rows), 32):
            chunk = rows[start : start + 32]
            sources = [read(image_id) for _, image_id, _, _ in chunk]
            files, protocols, levels = ([row[k] for row in chunk] for k in (0, 2, 3))
            jpegs = pool.map(_challenge_jpeg, sources, files, protocols, levels, repeat(seed))
            for file, jpeg in zip(files, jpegs, strict=True):
                path = out_dir / file
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(jpeg)


def folder_rows(root: Path, part: str) -> tuple[pl.DataFrame, dict[str, Path]]:
    """Generated images given as files: `<root>/<part>/roadwork/*` and `<root>/<part>/none/*`. Returns
    rows (image_id = sha256 of the file's bytes, as for dataset images; each file its own group) and
    image_id -> file."""
    files: dict[str, Path] = {}
    records = []
    for name, label in LABEL_DIRS.items():
        folder = Path(root) / part / name
        for path in sorted(p for p in folder.glob("*") if p.is_file()) if folder.is_dir() else []:
            key = hashlib.sha256(path.read_bytes()).hexdigest()
            files[key] = path
            records.append({"image_id": key, "source_id": None, "label": label, "group": f"file:{key[:16]}"})
    schema = {"image_id": pl.String, "source_id": pl.Int64, "label": pl.Int64, "group": pl.String}
    return pl.DataFrame(records, schema=schema), files


@dataclasses.dataclass
class Source:
    """Labelled images of one domain, per part, and how to read any of them by image id."""

    parts: dict[str, pl.DataFrame]  # part -> rows with image_id, source_id, label, group
    read: Callable[[str], bytes]


def real_source(index: pl.DataFrame, val_ids: list[str], raw_root: Path) -> Source:
    """The dataset's own images: `val` = the validation rows (`val_ids`), `test` = the labelled test split."""
    reader = ShardReader(raw_root)
    where = {
        r["image_id"]: (r["shard"], r["row"]) for r in index.select("image_id", "shard", "row").to_dicts()
    }
    parts = {
        "val": index.filter(pl.col("image_id").is_in(val_ids)),
        "test": index.filter(pl.col("split") == "test"),
    }
    return Source(parts, lambda image_id: reader.read(*where[image_id]))


def dataset_source(generated: pl.DataFrame, val_source_ids: set[int], root: Path) -> Source:
    """A generated half given as a NATIX-schema dataset (ingested by the caller): rows of a `val` or
    `test` split go to that part; rows of the `train` split that re-draw a validation row (the same
    `source_id`: the synthetic world's second style keeps the ids) go to `val`."""
    reader = ShardReader(root)
    where = {
        r["image_id"]: (r["shard"], r["row"]) for r in generated.select("image_id", "shard", "row").to_dicts()
    }
    redraws = (pl.col("split") == "train") & pl.col("source_id").is_in(sorted(val_source_ids))
    parts = {
        "val": generated.filter((pl.col("split") == "val") | redraws),
        "test": generated.filter(pl.col("split") == "test"),
    }
    return Source(parts, lambda image_id: reader.read(*where[image_id]))


def folder_source(root: Path) -> Source:
    """A generated half given as image files: `<root>/<part>/<roadwork|none>/*`."""
    files: dict[str, Path] = {}
    parts = {}
    for part in PARTS:
        parts[part], found = folder_rows(root, part)
        files |= found
    return Source(parts, lambda image_id: files[image_id].read_bytes())


def read_table(challenge_dir: Path, part: str) -> pl.DataFrame:
    """The challenges of one part (`val` or `test`), in table order."""
    path = Path(challenge_dir) / TABLE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no challenges yet; run `dvc repro challenge`")
    return pl.read_parquet(path).filter(pl.col("part") == part)


def build_challenges(
    sources: dict[str, Source], out_dir: Path, *, protocols: tuple[str, ...], config: ChallengeConfig
) -> pl.DataFrame:
    """Every (part, domain) challenge set under each of `protocols`, written under `out_dir` with
    `challenges.parquet`; the table."""
    tables = []
    for domain, source in sources.items():
        for part in PARTS:
            rows = source.parts[part]
            table = challenge_rows(rows, part=part, domain=domain, protocols=protocols, config=config)
            write_challenges(table, source.read, out_dir, config.seed)
            tables.append(table)
    table = pl.concat(tables) if tables else pl.DataFrame(schema=dict.fromkeys(COLUMNS, pl.String))
    table.write_parquet(out_dir / TABLE_FILE)
    return table


def generated_source(root: Path, val_source_ids: set[int], ingest_config: IngestConfig) -> Source | None:
    """The generated half in `root`: a NATIX-schema dataset (any `*.parquet`, read by the real ingest),
    else image files `<part>/<roadwork|none>/`; None when `root` holds no file (the real half alone)."""
    root = Path(root)
    if not root.is_dir() or not any(p.is_file() for p in root.rglob("*")):
        return None
    if any(root.rglob("*.parquet")):
        result = ingest(root, dataclasses.replace(ingest_config, labelled_splits=("train", "val", "test")))
        return dataset_source(result.index, val_source_ids, root)
    return folder_source(root)


def challenge_sources(
    index: pl.DataFrame,
    val: pl.DataFrame,
    *,
    raw_root: Path,
    generated_root: Path,
    ingest_config: IngestConfig,
) -> dict[str, Source]:
    """The real half (the index; `val` = the validation rows) and, when `generated_root` holds any file,
    the generated half."""
    sources = {"real": real_source(index, val["image_id"].to_list(), raw_root)}
    generated = generated_source(generated_root, set(val["source_id"].to_list()), ingest_config)
    return sources if generated is None else sources | {"generated": generated}


def summary_lines(table: pl.DataFrame) -> list[str]:
    """Challenges per part, protocol and domain, and how many show roadwork."""
    counts = table.group_by("part", "protocol", "domain").agg(n=pl.len(), roadwork=pl.col("label").sum())
    return [
        f"{part}/{protocol}/{domain}: {n} challenges ({roadwork} roadwork)"
        for part, protocol, domain, n, roadwork in counts.sort("part", "protocol", "domain").iter_rows()
    ]
