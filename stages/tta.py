"""Stage `tta`: FOODS test-time augmentation of the chosen full heads.

1. Every image of the requested prediction parts, under each of the N augmentations, cut into its views
   and run through the backbone once, into `<tta>` (one cache per augmentation; only missing
   (image, augmentation) pairs are computed, so FOODS settings never cost a backbone pass). Under
   `torchrun --nproc-per-node N -m stages.tta` the N processes split these passes by cache shard.
2. Per member: each augmentation's head logit and embedding, its distance to the training distribution,
   the closest `keep` share weighted by softmax(-d / temperature), the weighted mean probability per image.
Writes `<tta_predictions>/{plain,dora}/<member>/<part>.parquet` (the trained head; the `finetune` folds,
each row through its out-of-fold model), each augmentation's weights beside them, `<metrics>/tta.json`.
"""

from __future__ import annotations

from pathlib import Path

from roadwork.config import load_paths, load_stage_params, save_json, save_resolved, section, subset
from roadwork.data.index import read_index
from roadwork.device import resolve_device
from roadwork.distributed import init_ranks
from roadwork.ensemble import EnsembleConfig, Scoring
from roadwork.ensemble.choose import full_heads, members_or_chosen
from roadwork.features.backbone import BackboneDtype
from roadwork.features.cache import ExtractConfig
from roadwork.tta import TtaConfig
from roadwork.tta.run import run_tta, summary_lines
from roadwork.views.plan import ViewsConfig


def main() -> None:
    params = load_stage_params("tta")
    paths = load_paths(params)
    tta, submit = section(TtaConfig, params, "tta"), subset(Scoring, params, "submit")
    names = members_or_chosen(
        tta.members, section(EnsembleConfig, params, "ensemble"), submit.threshold, Path(paths.predictions)
    )
    heads, skipped = full_heads(Path(paths.heads), names)
    ranks = init_ranks(resolve_device(tta.device))
    views, summary = 0, {"skipped": skipped, "parts": {}}  # an MLP-only ensemble: nothing to augment
    if heads:
        dtype = subset(BackboneDtype, params, "backbone").dtype
        index = read_index(Path(paths.prepared))
        views, summary = run_tta(
            heads, paths=paths, tta=tta, extract=section(ExtractConfig, params, "extract"),
            views=section(ViewsConfig, params, "views"), dtype=dtype, index=index,
            threshold=submit.threshold, n_boot=submit.bootstrap, ranks=ranks,
        )  # fmt: skip
    where = f"tta[{ranks.rank}/{ranks.world}]" if ranks.world > 1 else "tta"
    print(f"{where}: {views} views computed (all ranks); members {heads}, skipped {sorted(skipped)}")
    if summary is None:  # a rank other than 0: its backbone passes are done
        return
    print("\n".join(summary_lines(summary)))
    for out in (paths.tta, paths.tta_predictions):
        Path(out).mkdir(parents=True, exist_ok=True)
    save_json(summary | {"skipped": skipped}, Path(paths.metrics) / "tta.json")
    save_resolved(tta, Path(paths.tta_predictions) / "tta_config.json")


if __name__ == "__main__":
    main()
