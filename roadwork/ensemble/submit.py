"""The submission: submit's top-k members, every variant scored, the chosen one written and served.

`<submission>/scores.json` scores every variant on the test split (best single member, ensemble,
+ DoRA, + TTA, + DoRA + TTA), each with 95 % group-bootstrap intervals, and the members' validation
MCCs; `submit.use` picks the variant written to `submission.csv`, and `ensemble.json` records what
`roadwork predict` serves. `metrics/final.json`, the DVC metric, holds the headline numbers a person
compares across experiments (`headline`): the served variant's test MCC, accuracy, ROC-AUC and reward,
and each member's validation MCC.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl

from roadwork.config import Paths, save_json
from roadwork.ensemble import EnsembleConfig, SubmitConfig
from roadwork.ensemble.choose import rank_members, validation_frames
from roadwork.ensemble.combine import variants
from roadwork.metrics import score
from roadwork.predictions import average_logits, read_layer, read_predictions

CHOICE_FILE = "ensemble.json"  # written by `submit` (members served, variant, threshold), read by `predict`
SCORES_FILE = "scores.json"  # every variant with intervals: what the report and `roadwork summary` read
HEADLINE = ("mcc", "accuracy", "roc_auc", "reward")


def submit(paths: Paths, ensemble: EnsembleConfig, config: SubmitConfig) -> dict[str, Any]:
    """Write `submission.csv`, the served choice and `final.json`; returns the final metrics."""
    val = validation_frames(Path(paths.predictions), ensemble.members)
    ranking = rank_members(val, config.threshold)
    chosen = [name for name, _ in ranking[: ensemble.top_k]]
    rows = variants(
        chosen,
        {m: read_predictions(Path(paths.predictions), m, "test") for m in chosen},
        dora=read_layer(Path(paths.dora_predictions), chosen, "test"),
        tta=read_layer(Path(paths.tta_predictions) / "plain", chosen, "test"),
        tta_dora=read_layer(Path(paths.tta_predictions) / "dora", chosen, "test"),
    )
    test = rows[config.use].with_columns(label_pred=(pl.col("prob") > config.threshold).cast(pl.Int8))
    out = Path(paths.submission)
    out.mkdir(parents=True, exist_ok=True)
    test.select("image_id", probability="prob", label="label_pred").write_csv(out / "submission.csv")
    served = chosen[:1] if config.use == "best_single" else chosen
    save_json({"members": served, "use": config.use, "threshold": config.threshold}, out / CHOICE_FILE)
    n = config.bootstrap
    final = {
        "members": {name: round(value, 6) for name, value in ranking},
        "chosen": chosen,
        "use": config.use,
        "val": score(average_logits([val[m] for m in chosen]), config.threshold, n),
        "test": score(test, config.threshold, n),
        "variants": {name: score(frame, config.threshold, n) for name, frame in rows.items()},
        "rows": {"val": len(val[chosen[0]]), "test": len(test)},
    }
    save_json(final, out / SCORES_FILE)
    save_json(headline(final), Path(paths.metrics) / "final.json")
    return final


def headline(scores: dict[str, Any]) -> dict[str, Any]:
    """The few numbers `dvc exp show` and `dvc metrics diff` compare: the served variant's test (else
    validation) MCC, accuracy, ROC-AUC and reward, and each member's validation MCC."""
    served = scores["test"] or scores["val"]
    out: dict[str, Any] = {key: None if served[key] is None else round(served[key], 4) for key in HEADLINE}
    return out | {"val_mcc": {name: round(value, 4) for name, value in scores["members"].items()}}


def read_scores(submission_dir: Path) -> dict[str, Any]:
    """`scores.json` written by `submit`."""
    path = Path(submission_dir) / SCORES_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no scores yet; run `dvc repro submit`")
    return json.loads(path.read_text())


def read_choice(submission_dir: Path) -> dict[str, Any]:
    """What `submit` chose to serve: members, variant (`use`) and threshold."""
    path = Path(submission_dir) / CHOICE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no ensemble chosen yet; run `dvc repro` first")
    return json.loads(path.read_text())
