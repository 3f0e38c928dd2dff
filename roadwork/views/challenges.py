"""Validator-style challenge sets: balanced labels, one level per image, 224 px JPEG, no metadata.

A challenge set has two parts: `val` (cut from the validation rows: for choosing members, ensemble,
threshold and calibration) and `test` (cut from the labelled test split: for scoring only). Each part
has up to two domains: `real` (the dataset's own images) and `generated` (re-drawn images of the same
kinds of scene: on real data a folder or NATIX-schema dataset the user supplies, on the embedded default
the synthetic world's second style, a stand-in for the validator's SDXL half). Within each (part, domain)
the labels are balanced by drawing as many images of the rarer label from the commoner one; each image
gets one level, uniform over 0-3, and is transformed exactly as `roadwork.views.validator` says.
Everything is a function of `challenge.seed` and the image ids: the same inputs give the same files.

The table (`challenges.parquet`) has one row per challenge: `file` (relative to the challenge folder),
`part`, `domain`, `image_id` (of the source image), `source_id`, `level`, `label`, `group` (the source's
video / GPS group: frames of one video are resampled together in bootstraps).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl

from roadwork.config import ConfigError
from roadwork.data.images import decode
from roadwork.views.validator import LEVELS, challenge, challenge_rng, to_jpeg

PARTS = ("val", "test")
DOMAINS = ("real", "generated")
TABLE_FILE = "challenges.parquet"
LABEL_DIRS = {"roadwork": 1, "none": 0}  # a generated folder: <root>/<part>/<roadwork|none>/*.jpg
COLUMNS = ("file", "part", "domain", "image_id", "source_id", "level", "label", "group")


@dataclasses.dataclass(frozen=True)
class ChallengeConfig:
    """params.yaml `challenge:`."""

    seed: int  # which images, which level, every random draw of the transforms
    max_per_domain: (
        int | None
    )  # challenges per (part, domain), at most; null: every image of the rarer label x 2
    generated: (
        str | None
    )  # the generated half: a NATIX-schema dataset root, or a folder <part>/<roadwork|none>/;
    # null: the real half alone (the report says so)

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


def challenge_rows(rows: pl.DataFrame, *, part: str, domain: str, config: ChallengeConfig) -> pl.DataFrame:
    """The challenges of one (part, domain): balanced rows, a level each, their file names."""
    rng = challenge_rng(config.seed, f"sample/{part}/{domain}")
    picked = balanced(rows, config.max_per_domain, rng)
    levels = rng.integers(0, len(LEVELS), len(picked))
    return picked.with_columns(
        file=pl.format("{}/{}/{}.jpg", pl.lit(part), pl.lit(domain), pl.col("image_id")),
        part=pl.lit(part),
        domain=pl.lit(domain),
        level=pl.Series(levels, dtype=pl.Int8),
        label=pl.col("label").cast(pl.Int8),
    ).select(COLUMNS)


def write_challenges(table: pl.DataFrame, read: Callable[[str], bytes], out_dir: Path, seed: int) -> None:
    """Each challenge's JPEG under `out_dir` (`read(image_id)` gives its source image's bytes)."""
    for file, image_id, level in table.select("file", "image_id", "level").iter_rows():
        image, _ = decode(read(image_id))
        rng = challenge_rng(seed, f"transform/{file}")
        path = out_dir / file
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(to_jpeg(challenge(image, int(level), rng)))


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
