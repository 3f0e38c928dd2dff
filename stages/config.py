"""Stage `config`: each stage's share of params.yaml + config.yaml, one JSON file per stage.

`<paths.params>/<stage>.json` (and `train-<member>.json` per ensemble member) holds exactly the keys that
stage reads (`roadwork.config.STAGE_KEYS`, plus `paths`); dvc.yaml makes each stage depend on its file,
so a change to a key reruns the stages that read it and no other. The files are rewritten on every
change of either params file, byte for byte the same where a stage's keys did not change.
"""

from __future__ import annotations

from roadwork.config import fresh_dir, load_params, load_paths, save_json, stage_shares


def main() -> None:
    params = load_params()
    out = fresh_dir(load_paths(params).params)  # no share left behind by a removed member
    shares = stage_shares(params)
    for name, share in shares.items():
        save_json(share, out / f"{name}.json")
    print(f"config: {len(shares)} stage shares -> {out}")


if __name__ == "__main__":
    main()
