"""Stage `train@<member>`: one ensemble member's head, trained on cached features.

Writes the head (`<heads>/<member>/`), validation and test predictions (`<predictions>/<member>/`) and
dvclive logs (`<live>/<member>/`). Validation rows come from the train split, grouped by video.
"""

from __future__ import annotations

import sys
from pathlib import Path

from dvclive import Live

from roadwork.config import load_params, load_paths, section
from roadwork.data.gps import GpsConfig, read_weights
from roadwork.data.index import read_index
from roadwork.features.backbone import read_manifest
from roadwork.features.cache import ExtractConfig, FeatureCache, expected_attrs
from roadwork.features.masks import open_masks
from roadwork.features.sam import MasksConfig
from roadwork.features.truth import source_manifest
from roadwork.train.checkpoint import save_head
from roadwork.train.config import member_config
from roadwork.train.data import prepare_tables
from roadwork.train.member import fit_member, write_predictions
from roadwork.views.plan import read_plan


def main(member: str) -> None:
    params = load_params()
    paths = load_paths(params)
    config = member_config(params, member)
    gps = section(GpsConfig, params, "gps")
    _, plan_meta = read_plan(Path(paths.views))
    backbone = read_manifest(Path(paths.backbone))
    expected = expected_attrs(
        section(ExtractConfig, params, "extract"), backbone=backbone, plan_meta=plan_meta
    )
    masks = None  # SAM 3 pseudo-masks (or true masks): targets of the full head's Dice term
    if config.model == "head" and config.masks:
        masks_config = section(MasksConfig, params, "masks")
        source = source_manifest(masks_config, sam_dir=Path(paths.sam), raw_root=Path(paths.raw))
        masks = open_masks(Path(paths.masks), masks_config, sam=source, plan_meta=plan_meta)
    tables, vocab = prepare_tables(
        read_index(Path(paths.prepared)),
        cache=FeatureCache.open_checked(Path(paths.features), expected),
        text_path=Path(paths.text),
        gps=read_weights(Path(paths.gps)),
        config=config,
        near_km=gps.near_km,
        first_bracket_km=gps.brackets_km[0],
        masks=masks,
    )
    print(f"train@{member}: " + ", ".join(f"{name} {len(t)}" for name, t in tables.items()))
    with Live(str(Path(paths.live) / member), dvcyaml=None, save_dvc_exp=False, report=None) as live:

        def log(record: dict[str, float]) -> None:
            for key, value in record.items():
                if key != "epoch":
                    live.log_metric(key, value)
            live.next_step()

        model, spec, result = fit_member(config=config, tables=tables, vocab=vocab, log=log)
        live.log_params({"member": member, "model": config.model, "rows_train": len(tables["train"])})
        summary = {"best_epoch": result.best_epoch, "epochs_run": result.epochs_run}
        scores, labelled = write_predictions(
            model=model, tables=tables, config=config, out_dir=Path(paths.predictions) / member
        )
        summary |= scores
        for part, frame in labelled.items():  # `dvc plots diff` compares these across experiments
            y, prob = frame["label"].to_numpy(), frame["prob"].to_numpy()
            live.log_sklearn_plot("roc", y, prob, name=f"roc/{part}.json")
            live.log_sklearn_plot("precision_recall", y, prob, name=f"precision_recall/{part}.json")
            live.log_sklearn_plot(
                "confusion_matrix", y, (prob > 0.5).astype(int), name=f"confusion/{part}.json"
            )
        live.summary.update(summary)
    save_head(Path(paths.heads) / member, model=model, spec=spec, vocab=vocab, config=config, summary=summary)
    test = f", test MCC {summary['test']['mcc']:.3f}" if "test" in summary else ""
    print(f"train@{member}: best epoch {result.best_epoch}, val MCC {summary['val']['mcc']:.3f}{test}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m stages.train MEMBER")
    main(sys.argv[1])
