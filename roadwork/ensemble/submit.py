"""The submission: members chosen for the target a miner is paid on, every variant scored, the chosen
model written and served.

Two ways to choose, both always scored (`submit.target` picks the served one):
- `natix`: members ranked by validation MCC on the validation rows with their metadata; the variants
  (best single member, ensemble, + DoRA, + TTA, + DoRA + TTA) scored on the NATIX test split.
- `validator`: members ranked by MCC, each at its own best cut, on the validation *challenges* (224 px
  JPEGs of levels 0-3, no metadata: shared VALIDATOR.md); the served probability calibrated on them so
  that the chosen cut sits at 0.5, where a validator rounds.

The target's choice answers rows with metadata and small images (a validator's 224 px queries). A third
choice, `image_only`, answers full-size images without metadata (a folder of photos given to `roadwork
predict`): members ranked the same way on the validation rows with their metadata NULL, calibrated
there, scored on the test split without metadata.

Writes `<submission>/submission.csv` (the served model on the NATIX test split), `ensemble.json`
(what `roadwork predict` serves: members and calibration of the target's choice and of the image-only
one), `scores.json` (everything, with 95 % group-bootstrap intervals) and `metrics/final.json`, the DVC
metric: the headline numbers a person compares across experiments (`headline`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl

from roadwork.config import Paths, save_json
from roadwork.ensemble import EnsembleConfig, SubmitConfig
from roadwork.ensemble.calibrate import IDENTITY, Calibration, fit_calibration
from roadwork.ensemble.challenge import challenge_frames, read_val_challenges
from roadwork.ensemble.choose import rank_members, validation_frames
from roadwork.ensemble.combine import variants
from roadwork.metrics import score, validator_metrics
from roadwork.predictions import IMAGE_ONLY, average_logits, read_layer, read_predictions

CHOICE_FILE = "ensemble.json"  # written by `submit` (members, variant, calibration), read by `predict`
SCORES_FILE = "scores.json"  # every variant with intervals: what the report and `roadwork summary` read
HEADLINE = ("mcc", "accuracy", "roc_auc", "reward")
SERVED_VARIANTS = ("best_single", "ensemble")  # what `roadwork predict` can reproduce


def natix_choice(paths: Paths, ensemble: EnsembleConfig, config: SubmitConfig) -> tuple[dict, dict]:
    """Members by validation MCC with metadata; every variant on the NATIX test split. Returns the
    scores and the test frame per variant."""
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
    n = config.bootstrap
    scores = {
        "members": {name: round(value, 6) for name, value in ranking},
        "chosen": chosen,
        "use": config.use,
        "val": score(average_logits([val[m] for m in chosen]), config.threshold, n),
        "test": score(rows[config.use], config.threshold, n),
        "variants": {name: score(frame, config.threshold, n) for name, frame in rows.items()},
        "rows": {"val": len(val[chosen[0]]), "test": len(rows[config.use])},
    }
    return scores, rows


def served_members(chosen: list[str], use: str) -> list[str]:
    """The chosen members that answer: the best one for `best_single`, all of them otherwise."""
    return chosen[:1] if use == "best_single" else chosen


def calibrated_choice(
    frames: dict[str, pl.DataFrame], ensemble: EnsembleConfig, use: str
) -> tuple[list[tuple[str, float]], list[str], pl.DataFrame, Calibration]:
    """Members ranked by MCC on labelled validation `frames`, each at its own best cut (a member whose
    logits are merely shifted is not ranked down: the served ensemble is calibrated), the top k; the
    served ones' mean logit per row, and its calibration there (its best cut at 0.5)."""
    ranking = rank_members(frames, None)
    chosen = [name for name, _ in ranking[: ensemble.top_k]]
    mean = average_logits([frames[m] for m in served_members(chosen, use)])
    calibration = fit_calibration(mean["logit"].to_numpy(), mean["label"].to_numpy())
    return ranking, chosen, mean, calibration


def validator_choice(
    paths: Paths, ensemble: EnsembleConfig, config: SubmitConfig
) -> tuple[dict, Calibration]:
    """Members by MCC on the validation challenges (no metadata), their ensemble calibrated there."""
    table, tokens = read_val_challenges(Path(paths.challenge))
    frames = challenge_frames(Path(paths.heads), list(ensemble.members), table, tokens)
    ranking, chosen, mean, calibration = calibrated_choice(frames, ensemble, config.use)
    aligned = pl.DataFrame({"image_id": table["file"]}).join(
        mean, on="image_id", how="left", maintain_order="left"
    )
    prob = calibration.probability(aligned["logit"].to_numpy())
    scores = {
        "members": {name: round(value, 6) for name, value in ranking},
        "chosen": chosen,
        "calibration": calibration.to_dict(),
        "val_challenges": validator_metrics(
            table["label"].to_numpy(), prob, n=config.bootstrap, groups=table["group"].to_numpy()
        ),
    }
    return scores, calibration


def image_only_choice(paths: Paths, ensemble: EnsembleConfig, config: SubmitConfig) -> dict[str, Any]:
    """Members by MCC on the validation rows without their metadata (full-size images as plain files,
    as `roadwork predict` gets a folder of photos), their ensemble calibrated there and scored on the
    test split without metadata."""
    pred = Path(paths.predictions)
    val = {m: read_predictions(pred, m, f"val_{IMAGE_ONLY}") for m in ensemble.members}
    ranking, chosen, mean, calibration = calibrated_choice(val, ensemble, config.use)
    served = served_members(chosen, config.use)
    test = average_logits([read_predictions(pred, m, f"test_{IMAGE_ONLY}") for m in served])
    n = config.bootstrap
    return {
        "members": {name: round(value, 6) for name, value in ranking},
        "chosen": chosen,
        "served": served,
        "calibration": calibration.to_dict(),
        "val": score(calibrated(mean, calibration), config.threshold, n),
        "test": score(calibrated(test, calibration), config.threshold, n),
    }


def calibrated(frame: pl.DataFrame, calibration: Calibration) -> pl.DataFrame:
    """A prediction frame whose `prob` is `calibration` of its logit."""
    return frame.with_columns(prob=pl.Series(calibration.probability(frame["logit"].to_numpy())))


def submit(paths: Paths, ensemble: EnsembleConfig, config: SubmitConfig) -> dict[str, Any]:
    """Write `submission.csv`, the served choice, `scores.json` and `final.json`; returns the scores."""
    natix, rows = natix_choice(paths, ensemble, config)
    validator, calibration = validator_choice(paths, ensemble, config)
    if config.target == "validator" and config.use not in SERVED_VARIANTS:
        raise ValueError(
            f"submit.use={config.use!r} with submit.target=validator: DoRA and TTA refine the NATIX "
            f"choice; serve one of {list(SERVED_VARIANTS)}"
        )
    chosen = validator["chosen"] if config.target == "validator" else natix["chosen"]
    served = served_members(chosen, config.use)
    calibration = calibration if config.target == "validator" else IDENTITY
    if config.target == "validator":
        test = average_logits([read_predictions(Path(paths.predictions), m, "test") for m in served])
    else:
        test = rows[config.use]
    test = calibrated(test, calibration)
    image_only = image_only_choice(paths, ensemble, config)
    out = Path(paths.submission)
    out.mkdir(parents=True, exist_ok=True)
    labels = test.with_columns(label_pred=(pl.col("prob") > config.threshold).cast(pl.Int8))
    labels.select("image_id", probability="prob", label="label_pred").write_csv(out / "submission.csv")
    choice = {"members": served, "use": config.use, "threshold": config.threshold, "target": config.target}
    full_size = {"members": image_only["served"], "calibration": image_only["calibration"]}
    save_json(choice | {"calibration": calibration.to_dict(), IMAGE_ONLY: full_size}, out / CHOICE_FILE)
    scores = natix | {
        "target": config.target,
        "validator": validator,
        IMAGE_ONLY: image_only,
        "served": {"members": served, "test": score(test, config.threshold, config.bootstrap)},
    }
    save_json(scores, out / SCORES_FILE)
    save_json(headline(scores), Path(paths.metrics) / "final.json")
    save_json(member_rows(scores), Path(paths.metrics) / "members.json")
    return scores


def headline(scores: dict[str, Any]) -> dict[str, Any]:
    """The numbers `dvc exp show` and `dvc metrics diff` compare: the served model's NATIX test (with
    metadata) MCC, accuracy, ROC-AUC and reward, and the MCC and ROC-AUC of what `roadwork predict`
    answers the test images as plain full-size files (the image-only choice): img_mcc, img_auc."""
    served = scores["served"]["test"] or scores["val"]
    plain = scores[IMAGE_ONLY]["test"] or scores[IMAGE_ONLY]["val"]
    numbers = {key: served[key] for key in HEADLINE}
    numbers |= {"img_mcc": plain["mcc"], "img_auc": plain["roc_auc"]}  # short: `dvc exp show` fits 200
    return {key: None if value is None else round(value, 4) for key, value in numbers.items()}


def member_rows(scores: dict[str, Any]) -> list[dict[str, Any]]:
    """Each member's validation MCC in the mode of the target (with metadata for natix, on the
    validation challenges for validator): the DVC plot `dvc plots diff` compares across experiments."""
    members = scores["validator"]["members"] if scores["target"] == "validator" else scores["members"]
    return [{"member": name, "val_mcc": round(value, 4)} for name, value in members.items()]


def read_choice(submission_dir: Path) -> dict[str, Any]:
    """What `submit` chose to serve: members, variant (`use`), threshold and calibration."""
    path = Path(submission_dir) / CHOICE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no ensemble chosen yet; run `dvc repro` first")
    return json.loads(path.read_text())
