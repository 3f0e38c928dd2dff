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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from roadwork.config import Paths, save_json
from roadwork.ensemble import EnsembleConfig, SubmitConfig
from roadwork.ensemble.calibrate import IDENTITY, Calibration, fit_calibration
from roadwork.ensemble.challenge import challenge_frames, read_val_challenges
from roadwork.ensemble.choose import rank_members, validation_frames
from roadwork.ensemble.combine import variants
from roadwork.metrics import score, validator_metrics
from roadwork.predictions import IMAGE_ONLY, average_logits, read_layer, read_predictions
from roadwork.views.protocols import PROTOCOLS

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


@dataclass(frozen=True)
class RouteSpec:
    """Which images without metadata a route answers, and the protocols its choice is made on."""

    name: str
    max_side: int | None  # images whose longer side is at most this; None: any size
    protocols: tuple[str, ...]


def route_specs(config: SubmitConfig, small_side: int) -> list[RouteSpec]:
    """The routes, by size: small images (a validator's 224 px crops and letterboxes, longer side at
    most `views.small_side`) and the rest (native size); or one route for all (`route_by_size: false`)."""
    if not config.route_by_size:
        return [RouteSpec("all", None, PROTOCOLS)]
    return [RouteSpec("small", small_side, ("crop", "letterbox")), RouteSpec("large", None, ("native",))]


def protocol_weight(protocols: pl.Series, weights: dict[str, float]) -> np.ndarray:
    """Per row: its protocol's weight shared among that protocol's rows (each protocol weighs as
    configured, however many challenges it has)."""
    counts = protocols.value_counts()
    share = {p: weights.get(p, 1.0) / n for p, n in counts.iter_rows()}
    return np.array([share[p] for p in protocols], dtype=np.float64)


def route_choice(
    frames: dict[str, pl.DataFrame], route: RouteSpec, ensemble: EnsembleConfig, config: SubmitConfig
) -> tuple[dict[str, Any], Calibration]:
    """Members ranked on the route's validation challenges (protocols weighted), each at its own best
    cut; the served ones' ensemble calibrated there (its best cut at 0.5) and scored per protocol."""
    keep = pl.col("protocol").is_in(list(route.protocols))
    frames = {name: frame.filter(keep) for name, frame in frames.items()}
    first = next(iter(frames.values()))
    if first.is_empty():
        raise ValueError(
            f"submit: route {route.name!r} has no validation challenges of {list(route.protocols)}: add them "
            "to validate.protocols, or set submit.route_by_size: false"
        )
    weight = protocol_weight(first["protocol"], config.protocol_weights)
    ranking = rank_members(frames, None, weight)
    chosen = [name for name, _ in ranking[: ensemble.top_k]]
    served = served_members(chosen, config.use)
    mean = average_logits([frames[m] for m in served]).with_columns(protocol=first["protocol"])
    calibration = fit_calibration(mean["logit"].to_numpy(), mean["label"].to_numpy(), weight)
    mean = calibrated(mean, calibration)
    scores = {
        protocol: validator_metrics(
            part["label"].to_numpy(),
            part["prob"].to_numpy(),
            n=config.bootstrap,
            groups=part["group"].to_numpy(),
        )
        for (protocol,), part in mean.group_by("protocol", maintain_order=True)
    }
    choice = {
        "members": {name: round(value, 6) for name, value in ranking},
        "chosen": chosen,
        "served": served,
        "calibration": calibration.to_dict(),
        "max_side": route.max_side,
        "protocols": list(route.protocols),
        "val_challenges": scores,
    }
    return choice, calibration


def validator_routes(
    paths: Paths, ensemble: EnsembleConfig, config: SubmitConfig, small_side: int
) -> dict[str, dict[str, Any]]:
    """Each route's choice on the validation challenges (no metadata), by route name."""
    table, tokens = read_val_challenges(Path(paths.challenge), Path(paths.challenge_tokens))
    frames = challenge_frames(Path(paths.heads), list(ensemble.members), table, tokens)
    return {
        spec.name: route_choice(frames, spec, ensemble, config)[0] for spec in route_specs(config, small_side)
    }


def plain_files_scores(paths: Paths, route: dict[str, Any], config: SubmitConfig) -> dict[str, Any]:
    """The route that answers full-size images, on the validation and test rows as plain files (no
    metadata): what `roadwork predict` answers a folder of the test images."""
    pred, calibration = Path(paths.predictions), Calibration(**route["calibration"])
    val, test = (
        average_logits([read_predictions(pred, m, f"{part}_{IMAGE_ONLY}") for m in route["served"]])
        for part in ("val", "test")
    )
    n = config.bootstrap
    return {
        "served": route["served"],
        "val": score(calibrated(val, calibration), config.threshold, n),
        "test": score(calibrated(test, calibration), config.threshold, n),
    }


def calibrated(frame: pl.DataFrame, calibration: Calibration) -> pl.DataFrame:
    """A prediction frame whose `prob` is `calibration` of its logit."""
    return frame.with_columns(prob=pl.Series(calibration.probability(frame["logit"].to_numpy())))


def submit(paths: Paths, ensemble: EnsembleConfig, config: SubmitConfig, small_side: int) -> dict[str, Any]:
    """Write `submission.csv`, the served choice, `scores.json` and `final.json`; returns the scores."""
    natix, rows = natix_choice(paths, ensemble, config)
    routes = validator_routes(paths, ensemble, config, small_side)
    if config.target == "validator" and config.use not in SERVED_VARIANTS:
        raise ValueError(
            f"submit.use={config.use!r} with submit.target=validator: DoRA and TTA refine the NATIX "
            f"choice; serve one of {list(SERVED_VARIANTS)}"
        )
    full_size = routes[list(routes)[-1]]  # the route without a size limit: full-size images
    if config.target == "validator":  # NATIX rows are full-size images: the full-size route answers
        served, calibration = full_size["served"], Calibration(**full_size["calibration"])
        test = average_logits([read_predictions(Path(paths.predictions), m, "test") for m in served])
    else:
        served, calibration, test = served_members(natix["chosen"], config.use), IDENTITY, rows[config.use]
    test = calibrated(test, calibration)
    out = Path(paths.submission)
    out.mkdir(parents=True, exist_ok=True)
    labels = test.with_columns(label_pred=(pl.col("prob") > config.threshold).cast(pl.Int8))
    labels.select("image_id", probability="prob", label="label_pred").write_csv(out / "submission.csv")
    keys = ("max_side", "protocols", "calibration")
    choice = {
        "members": served,
        "use": config.use,
        "threshold": config.threshold,
        "target": config.target,
        "calibration": calibration.to_dict(),
        "routes": [
            {"name": name, "members": r["served"]} | {k: r[k] for k in keys} for name, r in routes.items()
        ],
    }
    save_json(choice, out / CHOICE_FILE)
    scores = natix | {
        "target": config.target,
        "routes": routes,
        IMAGE_ONLY: plain_files_scores(paths, full_size, config),
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
    """Each member's validation MCC with metadata and on each route's validation challenges: the DVC
    plot `dvc plots diff` compares across experiments."""
    rows = [{"member": f"{name} (natix)", "val_mcc": round(v, 4)} for name, v in scores["members"].items()]
    for route, choice in scores["routes"].items():
        rows += [
            {"member": f"{name} ({route})", "val_mcc": round(v, 4)} for name, v in choice["members"].items()
        ]
    return rows


def read_choice(submission_dir: Path) -> dict[str, Any]:
    """What `submit` chose to serve: members, variant (`use`), threshold and calibration."""
    path = Path(submission_dir) / CHOICE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no ensemble chosen yet; run `dvc repro` first")
    return json.loads(path.read_text())
