"""Stage `backbone`: materialise the configured DINOv3 (tiny or real) and fingerprint its weights."""

from __future__ import annotations

from roadwork.config import fresh_dir, load_paths, load_stage_params, save_resolved, section
from roadwork.features.backbone import BackboneConfig, materialise


def main() -> None:
    params = load_stage_params("backbone")
    paths = load_paths(params)
    config = section(BackboneConfig, params, "backbone")
    out = fresh_dir(paths.backbone)
    manifest = materialise(config, out)
    save_resolved(config, out / "backbone_config.json")
    print(
        f"backbone: {manifest['source']} ({manifest['parameters']:,} params) -> {out}, "
        f"fingerprint {manifest['fingerprint'][:12]}"
    )


if __name__ == "__main__":
    main()
