"""Stage `finetune`: DoRA adapters for the chosen full heads, K-fold on the labelled adaptation split.

Writes, per adapted member:
- `<dora>/<member>/fold<k>/` (peft `save_pretrained`) and `folds.parquet` (each row's role in each fold);
- `<dora_predictions>/<member>/oof.parquet`: every row of the adaptation split, labelled rows out of fold
  (`fold` = the fold that held it out), unlabelled ones the fold average (`fold` = -1);
- `<dora_predictions>/<member>/{val,test}.parquet`: the same rows as the member's own prediction files,
  adaptation-split rows from `oof.parquet`, every other row the fold average; `submit` layers these over
  the plain member predictions;
and `<metrics>/finetune.json`: per member and overall, the head before / after on the same rows (MCC with
95 % group-bootstrap intervals, mean |Δlogit|, changed decisions), trainable share, epochs per fold.
Each fold's early-stopping set comes out of that fold's training part, never out of the held-out fold.
"""

from __future__ import annotations

from pathlib import Path

from roadwork.config import load_paths, load_stage_params, save_json, save_resolved, section, subset
from roadwork.data.index import read_index
from roadwork.device import resolve_device
from roadwork.ensemble import EnsembleConfig, Scoring
from roadwork.ensemble.choose import full_heads, members_or_chosen
from roadwork.features.cache import CacheKey, open_features
from roadwork.train.adapt import finetune_members
from roadwork.train.checkpoint import load_head
from roadwork.train.dora import FinetuneConfig


def main() -> None:
    params = load_stage_params("finetune")
    paths = load_paths(params)
    config = section(FinetuneConfig, params, "finetune")
    submit = subset(Scoring, params, "submit")
    ensemble = section(EnsembleConfig, params, "ensemble")
    names = members_or_chosen(config.members, ensemble, submit.threshold, Path(paths.predictions))
    heads, skipped = full_heads(Path(paths.heads), names)
    device = resolve_device(config.device)
    summary = finetune_members(
        [load_head(Path(paths.heads) / name, device) for name in heads],
        cache=open_features(paths, subset(CacheKey, params, "extract")),
        config=config,
        paths=paths,
        index=read_index(Path(paths.prepared)),
        threshold=submit.threshold,
        n_boot=submit.bootstrap,
    )
    for name, result in summary["members"].items():
        oof = result["oof"]
        print(f"finetune@{name}: out-of-fold MCC {oof['before']['mcc']:.3f} -> {oof['after']['mcc']:.3f}, "
              f"mean |Δlogit| {oof['mean_abs_delta_logit']:.2e}")  # fmt: skip
    print("".join(f"finetune: skipped {name}: {why}\n" for name, why in skipped.items()), end="")
    save_json(summary | {"skipped": skipped}, Path(paths.metrics) / "finetune.json")
    save_resolved(config, Path(paths.dora) / "finetune_config.json")
    Path(paths.dora_predictions).mkdir(parents=True, exist_ok=True)  # empty when no member is a full head


if __name__ == "__main__":
    main()
