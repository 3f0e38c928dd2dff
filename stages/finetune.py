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

from roadwork.combine import compare
from roadwork.config import load_params, load_paths, save_json, save_resolved, section
from roadwork.data.index import read_index
from roadwork.ensemble import average_logits
from roadwork.features.backbone import read_manifest
from roadwork.features.cache import ExtractConfig, FeatureCache, expected_attrs
from roadwork.train.adapt import MemberData, adapt_member, before_after
from roadwork.train.dora import FinetuneConfig, full_heads, members_or_chosen
from roadwork.views.plan import read_plan


def main() -> None:
    params = load_params()
    paths = load_paths(params)
    config = section(FinetuneConfig, params, "finetune")
    threshold, n_boot = float(params["submit"]["threshold"]), int(params["submit"]["bootstrap"])
    names = members_or_chosen(config.members, params, Path(paths.predictions))
    heads, skipped = full_heads(Path(paths.heads), names)
    _, plan_meta = read_plan(Path(paths.views))
    extract = section(ExtractConfig, params, "extract")
    expected = expected_attrs(extract, backbone=read_manifest(Path(paths.backbone)), plan_meta=plan_meta)
    cache = FeatureCache.open_checked(Path(paths.features), expected)
    index = read_index(Path(paths.prepared))
    summary: dict = {"split": config.split, "folds": config.folds, "lr": config.lr, "epochs": config.epochs}
    summary |= {"skipped": skipped, "members": {}}
    held = []
    for name in heads:
        member = MemberData.load(name, params=params, paths=paths, cache=cache, device=config.device)
        result, oof = adapt_member(
            member, config=config, paths=paths, index=index, threshold=threshold, n_boot=n_boot
        )
        summary["members"][name] = result
        held.append(oof)
        before, after = result["oof"]["before"]["mcc"], result["oof"]["after"]["mcc"]
        print(
            f"finetune@{name}: out-of-fold MCC {before:.3f} -> {after:.3f}, "
            f"mean |Δlogit| {result['oof']['mean_abs_delta_logit']:.2e}, {result['seconds']} s"
        )
    if held:  # the adapted members averaged, before and after
        befores = [before_after(frame)[0] for frame in held]
        summary["overall"] = compare(average_logits(befores), average_logits(held), threshold, n_boot)
    for name, why in skipped.items():
        print(f"finetune: skipped {name}: {why}")
    save_json(summary, Path(paths.metrics) / "finetune.json")
    save_resolved(config, Path(paths.dora) / "finetune_config.json")
    Path(paths.dora_predictions).mkdir(parents=True, exist_ok=True)  # empty when no member is a full head


if __name__ == "__main__":
    main()
