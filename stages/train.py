"""Stage `train@<member>`: one ensemble member's head, trained on cached features.

Writes the head (`<heads>/<member>/`), validation and test predictions (`<predictions>/<member>/`) and
dvclive logs (`<live>/<member>/`). Validation rows come from the train split, grouped by video.
"""

from __future__ import annotations

import sys
from pathlib import Path

from roadwork.config import load_paths, load_stage_params
from roadwork.data.index import read_index
from roadwork.train.checkpoint import save_head
from roadwork.train.config import member_config_of
from roadwork.train.crossfit import train_member
from roadwork.train.data import open_inputs
from roadwork.train.live import MemberLive
from roadwork.train.member import write_predictions


def main(member: str) -> None:
    params = load_stage_params("train", member)
    paths = load_paths(params)
    config = member_config_of(params, member)
    inputs = open_inputs(params, masks=config.model == "head" and config.masks)  # masks: the Dice target
    with MemberLive(Path(paths.live) / member) as live:
        trained = train_member(read_index(Path(paths.prepared)), config=config, inputs=inputs, log=live.step)
        tables, result = trained.tables, trained.result
        print(f"train@{member}: " + ", ".join(f"{name} {len(t)}" for name, t in tables.items()))
        scores, labelled = write_predictions(
            model=trained.model, tables=tables, config=config, out_dir=Path(paths.predictions) / member
        )
        summary = {"best_epoch": result.best_epoch, "epochs_run": result.epochs_run, **scores}
        if trained.fold_results:
            summary["fold_best_epochs"] = [r.best_epoch for r in trained.fold_results]
        live.finish(
            summary, labelled, {"member": member, "model": config.model, "rows_train": len(tables["train"])}
        )
    save_head(
        Path(paths.heads) / member,
        model=trained.model,
        spec=trained.spec,
        vocab=trained.vocab,
        config=config,
        summary=summary,
        heldout=trained.heldout,
    )
    test = f", test MCC {summary['test']['mcc']:.3f}" if "test" in summary else ""
    print(f"train@{member}: best epoch {result.best_epoch}, val MCC {summary['val']['mcc']:.3f}{test}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m stages.train MEMBER")
    main(sys.argv[1])
