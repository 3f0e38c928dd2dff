"""Stage `submit`: the top-k members by validation MCC, logits averaged, scored on the test split."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from roadwork.config import load_params, load_paths, save_json
from roadwork.ensemble import average_logits, rank_members, read_predictions
from roadwork.predict import CHOICE_FILE
from roadwork.report.metrics import metrics_with_ci


def score(frame: pl.DataFrame, threshold: float, n: int) -> dict | None:
    """Metrics with 95 % intervals (bootstrap over groups: frames of one video move together)."""
    labelled = frame.filter(pl.col("label").is_not_null())
    if labelled.is_empty():
        return None
    return metrics_with_ci(
        labelled["label"].to_numpy(),
        labelled["prob"].to_numpy(),
        threshold=threshold,
        n=n,
        seed=0,
        groups=labelled["group"].to_numpy(),
    )


def main() -> None:
    params = load_params()
    paths = load_paths(params)
    ensemble, submit = params["ensemble"], params["submit"]
    threshold, n_boot = float(submit["threshold"]), int(submit["bootstrap"])
    members = list(ensemble["members"])
    val = {m: read_predictions(Path(paths.predictions), m, "val") for m in members}
    ranking = rank_members(val, threshold)
    chosen = [name for name, _ in ranking[: int(ensemble["top_k"])]]
    test = average_logits([read_predictions(Path(paths.predictions), m, "test") for m in chosen])
    test = test.with_columns(label_pred=(pl.col("prob") > threshold).cast(pl.Int8))

    out = Path(paths.submission)
    out.mkdir(parents=True, exist_ok=True)
    test.select("image_id", probability="prob", label="label_pred").write_csv(out / "submission.csv")
    save_json({"members": chosen, "threshold": threshold}, out / CHOICE_FILE)  # what `roadwork predict` loads
    best = read_predictions(Path(paths.predictions), chosen[0], "test")
    final = {
        "members": {name: round(value, 6) for name, value in ranking},
        "chosen": chosen,
        "val": score(average_logits([val[m] for m in chosen]), threshold, n_boot),
        "test": score(test, threshold, n_boot),
        "test_best_single": score(best, threshold, n_boot),
        "rows": {"val": len(val[chosen[0]]), "test": len(test)},
    }
    save_json(final, Path(paths.metrics) / "final.json")
    headline = final["test"] or final["val"]
    print(
        f"submit: members {chosen}, test MCC {headline['mcc']:.3f} "
        f"[{headline['mcc_lo']:.3f}, {headline['mcc_hi']:.3f}] -> {out / 'submission.csv'}"
    )


if __name__ == "__main__":
    main()
