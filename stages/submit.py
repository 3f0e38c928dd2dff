"""Stage `submit`: the top-k members by validation MCC, refined by DoRA and TTA where they exist.

`metrics/final.json` scores every variant on the test split (best single member, ensemble, + DoRA,
+ TTA, + DoRA + TTA), each with 95 % group-bootstrap intervals, so `dvc metrics diff` shows where each
step helps or hurts; `submit.use` picks the variant written to `submission.csv`.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from roadwork.combine import read_layer, score, variants
from roadwork.config import load_params, load_paths, save_json
from roadwork.ensemble import CHOICE_FILE, average_logits, rank_members, read_predictions


def main() -> None:
    params = load_params()
    paths = load_paths(params)
    ensemble, submit = params["ensemble"], params["submit"]
    threshold, n_boot, use = float(submit["threshold"]), int(submit["bootstrap"]), submit["use"]
    pred = Path(paths.predictions)
    val = {m: read_predictions(pred, m, "val") for m in ensemble["members"]}
    ranking = rank_members(val, threshold)
    chosen = [name for name, _ in ranking[: int(ensemble["top_k"])]]
    rows = variants(
        chosen,
        {m: read_predictions(pred, m, "test") for m in chosen},
        dora=read_layer(Path(paths.dora_predictions), chosen, "test"),
        tta=read_layer(Path(paths.tta_predictions) / "plain", chosen, "test"),
        tta_dora=read_layer(Path(paths.tta_predictions) / "dora", chosen, "test"),
    )
    if use not in rows:
        raise ValueError(f"submit.use={use!r}: expected one of {sorted(rows)}")
    test = rows[use].with_columns(label_pred=(pl.col("prob") > threshold).cast(pl.Int8))

    out = Path(paths.submission)
    out.mkdir(parents=True, exist_ok=True)
    test.select("image_id", probability="prob", label="label_pred").write_csv(out / "submission.csv")
    served = chosen[:1] if use == "best_single" else chosen
    save_json({"members": served, "use": use, "threshold": threshold}, out / CHOICE_FILE)  # for `predict`
    final = {
        "members": {name: round(value, 6) for name, value in ranking},
        "chosen": chosen,
        "use": use,
        "val": score(average_logits([val[m] for m in chosen]), threshold, n_boot),
        "test": score(test, threshold, n_boot),
        "variants": {name: score(frame, threshold, n_boot) for name, frame in rows.items()},
        "rows": {"val": len(val[chosen[0]]), "test": len(test)},
    }
    save_json(final, Path(paths.metrics) / "final.json")
    headline = final["test"] or final["val"]
    print(
        f"submit: members {chosen}, {use}: test MCC {headline['mcc']:.3f} "
        f"[{headline['mcc_lo']:.3f}, {headline['mcc_hi']:.3f}] -> {out / 'submission.csv'}"
    )
    for name, scores in final["variants"].items():
        if scores:
            print(f"  {name:<18} MCC {scores['mcc']:.3f} [{scores['mcc_lo']:.3f}, {scores['mcc_hi']:.3f}]")


if __name__ == "__main__":
    main()
