"""Stage `sam`: materialise the configured SAM 3 (tiny or real) with its processor; fingerprint it."""

from __future__ import annotations

import shutil
from pathlib import Path

from roadwork.config import from_dict, load_paths, load_stage_params, save_json, to_dict
from roadwork.features.mask_config import TinySamConfig
from roadwork.features.sam import materialise


def main() -> None:
    params = load_stage_params("sam")
    paths = load_paths(params)
    model, tiny = params["masks"]["model"], from_dict(TinySamConfig, params["masks"]["tiny"], "masks.tiny")
    out = Path(paths.sam)
    shutil.rmtree(out, ignore_errors=True)
    manifest = materialise(model, tiny, out)
    # Only the keys that define the model: thresholds and grids belong to the `masks` stage.
    save_json({"model": model, "tiny": to_dict(tiny)}, out / "sam_config.json")
    print(
        f"sam: {manifest['source']} ({manifest['parameters']:,} params, input "
        f"{manifest['input_size'][0]}x{manifest['input_size'][1]}) -> {out}, "
        f"fingerprint {manifest['fingerprint'][:12]}"
    )


if __name__ == "__main__":
    main()
