"""Stage `challenge_tokens`: the validation challenges of every protocol through the backbone once,
exactly as `roadwork predict` embeds an image; `submit` chooses and calibrates the served model on them.

Writes `<paths.challenge_tokens>/val.npy` (pooled tokens `[n, V, 3, D]` float16, in the order of the
`val` rows of `challenges.parquet`) and the resolved view rule and cache key beside it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from roadwork.config import fresh_dir, load_paths, load_stage_params, save_json, section, subset, to_dict
from roadwork.device import resolve_device
from roadwork.ensemble.challenge import VAL_TOKENS
from roadwork.features.backbone import BackboneDtype, load_backbone
from roadwork.features.cache import CacheKey
from roadwork.features.extract import embed_files
from roadwork.views.challenges import read_table
from roadwork.views.plan import ViewsConfig


def main() -> None:
    params = load_stage_params("challenge_tokens")
    paths = load_paths(params)
    views, key = section(ViewsConfig, params, "views"), subset(CacheKey, params, "extract")
    table = read_table(Path(paths.challenge), "val")
    dtype = subset(BackboneDtype, params, "backbone").dtype
    model = load_backbone(Path(paths.backbone), dtype, resolve_device("auto"))
    tokens = embed_files(model, [Path(paths.challenge) / f for f in table["file"]], views=views, config=key)
    out = fresh_dir(paths.challenge_tokens)
    np.save(out / VAL_TOKENS, tokens)
    save_json({"views": to_dict(views), "extract": to_dict(key)}, out / "tokens_config.json")
    print(f"challenge_tokens: {len(table)} validation challenges -> {out / VAL_TOKENS}")


if __name__ == "__main__":
    main()
