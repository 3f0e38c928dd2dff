"""Stage `sam`: materialise the configured SAM 3 (tiny or real) with its processor; fingerprint it."""

from __future__ import annotations

import shutil
from pathlib import Path

from roadwork.config import load_params, load_paths, save_json, section, to_dict
from roadwork.features.mask_config import MasksConfig
from roadwork.features.sam import materialise


def main() -> None:
    params = load_params()
    paths = load_paths(params)
    config = section(MasksConfig, params, "masks")
    out = Path(paths.sam)
    shutil.rmtree(out, ignore_errors=True)
    manifest = materialise(config, out)
    # Only the keys that define the model: thresholds and grids belong to the `masks` stage.
    save_json({"model": config.model, "tiny": to_dict(config.tiny)}, out / "sam_config.json")
    print(
        f"sam: {manifest['source']} ({manifest['parameters']:,} params, input "
        f"{manifest['input_size'][0]}x{manifest['input_size'][1]}) -> {out}, "
        f"fingerprint {manifest['fingerprint'][:12]}"
    )


if __name__ == "__main__":
    main()
