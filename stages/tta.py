"""Stage `tta`: FOODS test-time augmentation of the chosen full heads.

1. Every image of the requested prediction parts, under each of the N augmentations, cut into its views
   and run through the backbone once, into `<tta>` (one cache per augmentation; only missing
   (image, augmentation) pairs are computed, so FOODS settings never cost a backbone pass). Under
   `torchrun --nproc-per-node N -m stages.tta` the N processes split these passes by cache shard.
2. Per member: each augmentation's head logit and embedding, its distance to the training distribution,
   the closest `keep` share weighted by softmax(-d / temperature), the weighted mean probability per image.
Writes `<tta_predictions>/plain/<member>/<part>.parquet` (the trained head) and, for members `finetune`
adapted, `<tta_predictions>/dora/<member>/<part>.parquet` (each row through its out-of-fold model), the
weights per augmentation beside each (`<part>_weights.parquet`), and `<metrics>/tta.json`.
"""

from __future__ import annotations

from pathlib import Path

from roadwork.config import load_params, load_paths, save_json, save_resolved, section
from roadwork.data.index import read_index
from roadwork.device import resolve_device
from roadwork.distributed import init_ranks
from roadwork.ensemble import read_predictions
from roadwork.features.backbone import BackboneConfig, read_manifest
from roadwork.features.cache import ExtractConfig, FeatureCache, expected_attrs
from roadwork.train.adapt import MemberData, rows_for
from roadwork.train.dora import full_heads, members_or_chosen
from roadwork.tta import TtaConfig
from roadwork.tta.run import ensure_features, member_tta, score, write_member
from roadwork.views.plan import ViewsConfig, read_plan


def main() -> None:
    params = load_params()
    paths = load_paths(params)
    tta = section(TtaConfig, params, "tta")
    extract = section(ExtractConfig, params, "extract")
    threshold, n_boot = float(params["submit"]["threshold"]), int(params["submit"]["bootstrap"])
    names = members_or_chosen(tta.members, params, Path(paths.predictions))
    heads, skipped = full_heads(Path(paths.heads), names)
    ranks = init_ranks(resolve_device(tta.device))
    if not heads:  # an MLP-only ensemble: nothing to augment; submit then has no +tta variants
        if ranks.rank == 0:
            print(
                f"tta: none of the members {names} is a full head (FOODS needs its embedding); nothing to do"
            )
            for out in (paths.tta, paths.tta_predictions):
                Path(out).mkdir(parents=True, exist_ok=True)
            save_json({"skipped": skipped, "parts": {}}, Path(paths.metrics) / "tta.json")
            save_resolved(tta, Path(paths.tta_predictions) / "tta_config.json")
        return
    index = read_index(Path(paths.prepared))
    _, plan_meta = read_plan(Path(paths.views))
    frames = [read_predictions(Path(paths.predictions), n, p) for n in heads for p in tta.parts]
    ids = list(dict.fromkeys(i for frame in frames for i in frame["image_id"].to_list()))
    caches, counts = ensure_features(
        paths=paths,
        tta=tta,
        extract=extract,
        views=section(ViewsConfig, params, "views"),
        dtype=section(BackboneConfig, params, "backbone").dtype,
        plan_meta=plan_meta,
        jobs=rows_for(index, ids, "tta"),
        ranks=ranks,
    )
    where = f"tta[{ranks.rank}/{ranks.world}]" if ranks.world > 1 else "tta"
    print(
        f"{where}: {counts['views']} views computed for {counts['images']} image(s) in {counts['seconds']} s"
    )
    if ranks.rank != 0:  # the backbone passes are split; FOODS scoring is cheap and done by rank 0
        return
    expected = expected_attrs(extract, backbone=read_manifest(Path(paths.backbone)), plan_meta=plan_meta)
    cache = FeatureCache.open_checked(Path(paths.features), expected)
    summary: dict = {
        "augmentations": {f"aug{k:02d}": s.key() for k, s in enumerate(tta.augmentations)},
        "distance": tta.distance,
        "keep": tta.keep,
        "temperature": tta.temperature,
        "computed_views": counts["views"],
        "extract_seconds": counts["seconds"],
        "skipped": skipped,
        "parts": {},
    }
    for part in tta.parts:
        members = [
            member_tta(
                MemberData.load(n, params=params, paths=paths, cache=cache, device=tta.device),
                part,
                paths=paths,
                tta=tta,
                index=index,
            )
            for n in heads
        ]
        score(members, caches, tta.augmentations)
        summary["parts"][part] = {}
        for m in members:
            result = write_member(m, part, paths=paths, tta=tta, threshold=threshold, n_boot=n_boot)
            summary["parts"][part][m.name] = result
            for variant in ("plain", "dora"):
                if variant in result and result[variant]["before"] is not None:
                    before, after = result[variant]["before"]["mcc"], result[variant]["after"]["mcc"]
                    print(f"tta@{m.name}/{variant} {part}: MCC {before:.3f} -> {after:.3f}")
    save_json(summary, Path(paths.metrics) / "tta.json")
    save_resolved(tta, Path(paths.tta_predictions) / "tta_config.json")


if __name__ == "__main__":
    main()
