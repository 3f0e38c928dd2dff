"""Stage `challenge`: validator-style challenge sets (shared VALIDATOR.md) from the validation rows
(`val`, for choosing) and the labelled test split (`test`, for scoring), under every protocol of
`validate.protocols` (crop, letterbox, native).

Writes `<paths.challenge>/{val,test}/<protocol>/{real,generated}/<image_id>.jpg` (JPEG quality 75; a
level 0-3 each under crop and letterbox) and `challenges.parquet`. The generated half comes from
`<paths.generated>`: a NATIX-schema dataset (the embedded default's second rendering style, a stand-in
for SDXL) or a folder `<part>/<roadwork|none>/`; an empty folder means the real half alone.
"""

from __future__ import annotations

from pathlib import Path

from roadwork.config import fresh_dir, load_paths, load_stage_params, save_resolved, section, subset
from roadwork.data.index import read_index
from roadwork.data.ingest import IngestConfig
from roadwork.train.data import ValidationSplit, train_val_rows
from roadwork.views.challenges import ChallengeConfig, build_challenges, challenge_sources, summary_lines
from roadwork.views.protocols import ValidateConfig


def main() -> None:
    params = load_stage_params("challenge")
    paths = load_paths(params)
    config = section(ChallengeConfig, params, "challenge")
    split = subset(ValidationSplit, params, "train")
    index = read_index(Path(paths.prepared))
    _, val = train_val_rows(index, split.val_fraction, split.split_seed)
    sources = challenge_sources(
        index,
        val,
        raw_root=Path(paths.raw),
        generated_root=Path(paths.generated),
        ingest_config=section(IngestConfig, params, "ingest"),
    )
    out = fresh_dir(paths.challenge)
    protocols = section(ValidateConfig, params, "validate").protocols
    table = build_challenges(sources, out, protocols=protocols, config=config)
    save_resolved(config, out / "challenge_config.json")
    print("\n".join(f"challenge: {line}" for line in summary_lines(table)))
    if "generated" not in sources:
        print(f"challenge: {paths.generated} is empty: no generated half, the real half is scored alone")


if __name__ == "__main__":
    main()
