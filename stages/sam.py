"""Stage `sam`: materialise the configured SAM 3 (tiny or real) with its processor; fingerprint it."""

from __future__ import annotations

from roadwork.config import fresh_dir, load_paths, load_stage_params, save_resolved, section
from roadwork.masks.config import SamSource
from roadwork.masks.sam import materialise


def main() -> None:
    params = load_stage_params("sam")
    paths = load_paths(params)
    source = section(SamSource, params, "masks")  # only the keys that define the model
    out = fresh_dir(paths.sam)
    manifest = materialise(source.model, source.tiny, out)
    save_resolved(source, out / "sam_config.json")
    print(
        f"sam: {manifest['source']} ({manifest['parameters']:,} params, input "
        f"{manifest['input_size'][0]}x{manifest['input_size'][1]}) -> {out}, "
        f"fingerprint {manifest['fingerprint'][:12]}"
    )


if __name__ == "__main__":
    main()
