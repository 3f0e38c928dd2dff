"""Stage `train@<member>`: one ensemble member's head, trained on cached features.

Writes the head (`<heads>/<member>/`), validation and test predictions (`<predictions>/<member>/`) and
dvclive logs (`<live>/<member>/`). Validation rows come from the train split, grouped by video.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import polars as pl
import torch
from dvclive import Live

from roadwork.config import load_params, load_paths, section
from roadwork.data.gps import GpsConfig, read_weights
from roadwork.data.index import read_index
from roadwork.features.backbone import read_manifest
from roadwork.features.cache import ExtractConfig, FeatureCache, expected_attrs
from roadwork.models import build_model
from roadwork.report.metrics import binary_metrics
from roadwork.train.checkpoint import save_head
from roadwork.train.config import member_config
from roadwork.train.data import Table, describe, prepare_tables
from roadwork.train.loop import predict_with_model, train_with_model
from roadwork.views.plan import read_plan


def predictions_frame(table: Table, split: str, logit: np.ndarray) -> pl.DataFrame:
    label = pl.Series("label", table.label, dtype=pl.Int64)
    return pl.DataFrame(
        {
            "image_id": table.image_id,
            "split": [split] * len(table),
            "label": label.set(label < 0, None),
            "group": table.group,
            "logit": logit.astype(np.float64),
            "prob": 1.0 / (1.0 + np.exp(-logit.astype(np.float64))),
        }
    )


def main(member: str) -> None:
    params = load_params()
    paths = load_paths(params)
    config = member_config(params, member)
    near_km = section(GpsConfig, params, "gps").near_km
    _, plan_meta = read_plan(Path(paths.views))
    expected = expected_attrs(
        section(ExtractConfig, params, "extract"),
        backbone=read_manifest(Path(paths.backbone)),
        plan_meta=plan_meta,
    )
    cache = FeatureCache.open_checked(Path(paths.features), expected)
    tables, vocab = prepare_tables(
        read_index(Path(paths.prepared)),
        cache=cache,
        text_path=Path(paths.text),
        gps=read_weights(Path(paths.gps)),
        config=config,
        near_km=near_km,
    )
    print(f"train@{member}: " + ", ".join(f"{k} {describe(t)['rows']}" for k, t in tables.items()))
    spec = {
        "model": config.model,
        "view_dim": tables["train"].features.shape[-1],
        "n_views": tables["train"].features.shape[2],
        "vocab_sizes": vocab.sizes(),
        "hidden": config.hidden,
        "dropout": config.dropout,
        "metadata": config.metadata,
    }
    torch.manual_seed(config.seed)  # the initial weights are part of the member's recipe
    model = build_model(spec)
    with Live(str(Path(paths.live) / member), dvcyaml=None, save_dvc_exp=False, report=None) as live:
        live.log_params({"member": member, **spec["vocab_sizes"], "rows_train": len(tables["train"])})

        def log(record: dict[str, float]) -> None:
            for key, value in record.items():
                if key != "epoch":
                    live.log_metric(key, value)
            live.next_step()

        result = train_with_model(
            model=model, train=tables["train"], val=tables["val"], config=config, log=log
        )
        out = Path(paths.predictions) / member
        out.mkdir(parents=True, exist_ok=True)
        summary = {"best_epoch": result.best_epoch, "epochs_run": result.epochs_run}
        for part in ("val", "test"):
            logit = predict_with_model(model=model, table=tables[part], config=config)
            frame = predictions_frame(tables[part], part, logit)
            frame.write_parquet(out / f"{part}.parquet")
            labelled = frame.filter(pl.col("label").is_not_null())
            if len(labelled):
                scores = binary_metrics(labelled["label"].to_numpy(), labelled["prob"].to_numpy())
                summary[part] = {k: scores[k] for k in ("mcc", "accuracy", "roc_auc", "f1")}
        live.summary.update(summary)
    save_head(Path(paths.heads) / member, model=model, spec=spec, vocab=vocab, config=config, summary=summary)
    print(
        f"train@{member}: best epoch {result.best_epoch}, val MCC {summary['val']['mcc']:.3f}"
        + (f", test MCC {summary['test']['mcc']:.3f}" if "test" in summary else "")
    )


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m stages.train MEMBER")
    main(sys.argv[1])
