"""Stage `challenge`: validator-style challenge sets (shared VALIDATOR.md) from the validation rows
(`val`, for choosing) and the labelled test split (`test`, for scoring).

Writes `<paths.challenge>/{val,test}/{real,generated}/<image_id>.jpg` (224 x 224, JPEG quality 75,
one level 0-3 each) and `challenges.parquet`. The generated half comes from `<paths.generated>`: a
NATIX-schema dataset (the embedded default's second rendering style, a stand-in for SDXL) or a folder
`<part>/<roadwork|none>/`; an empty folder means the real half alone.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from roadwork.config import load_paths, load_stage_params, save_resolved, section, subset
from roadwork.data.index import read_index
from roadwork.data.ingest import IngestConfig
from roadwork.device import resolve_device
from roadwork.features.backbone import load_backbone
from roadwork.features.cache import CacheKey
from roadwork.features.extract import embed_files
from roadwork.train.data import train_val_rows
from roadwork.views.challenges import (
    VAL_FEATURES,
    ChallengeConfig,
    build_challenges,
    challenge_sources,
    part_files,
    summary_lines,
)
from roadwork.views.plan import ViewsConfig


def main() -> None:
    params = load_stage_params("challenge")
    paths = load_paths(params)
    config = section(ChallengeConfig, params, "challenge")
    index = read_index(Path(paths.prepared))
    _, val = train_val_rows(index, params["train"]["val_fraction"], params["train"]["split_seed"])
    sources = challenge_sources(
        index,
        val,
        raw_root=Path(paths.raw),
        generated_root=Path(paths.generated),
        ingest_config=section(IngestConfig, params, "ingest"),
    )
    out = Path(paths.challenge)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    table = build_challenges(sources, out, config)
    # The validation challenges through the backbone once, exactly as `roadwork predict` embeds an image:
    # `submit` chooses and calibrates the served model on them.
    model = load_backbone(Path(paths.backbone), params["backbone"]["dtype"], resolve_device("auto"))
    views, key = section(ViewsConfig, params, "views"), subset(CacheKey, params, "extract")
    np.save(out / VAL_FEATURES, embed_files(model, part_files(table, "val", out), views=views, config=key))
    save_resolved(config, out / "challenge_config.json")
    print("\n".join(f"challenge: {line}" for line in summary_lines(table)))
    if "generated" not in sources:
        print(f"challenge: {paths.generated} is empty: no generated half, the real half is scored alone")


if __name__ == "__main__":
    main()
