"""The served model on the NATIX test split's images as plain files, as a user would run it.

Writes every labelled test image's bytes to `<dir>/<image_id>.jpg` (no metadata travels with a file),
runs `roadwork predict <dir>` as a subprocess, reads its JSON lines and scores them against the labels:
MCC at the served threshold and ROC-AUC, with 95 % bootstrap intervals over videos. Runs in a project
whose pipeline has run (`dvc repro`); prints one line and writes `experiments/results/served.json`.

    python -m experiments.served
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import polars as pl

from roadwork.config import load_params, load_paths, save_json
from roadwork.data.images import ShardReader
from roadwork.data.index import read_index
from roadwork.metrics import metrics_with_ci


def write_files(rows: pl.DataFrame, raw_root: Path, out_dir: Path) -> None:
    """Each row's image bytes as `<image_id>.jpg`, untouched."""
    reader = ShardReader(raw_root)
    for image_id, shard, row in rows.select("image_id", "shard", "row").iter_rows():
        (out_dir / f"{image_id}.jpg").write_bytes(reader.read(shard, row))


def predict_folder(folder: Path) -> pl.DataFrame:
    """`roadwork predict folder` as a user runs it: image_id, probability, label."""
    run = subprocess.run(
        [sys.executable, "-m", "roadwork.cli", "predict", str(folder)], capture_output=True, text=True
    )
    if run.returncode != 0:
        raise RuntimeError(f"roadwork predict {folder} exited {run.returncode}: {run.stderr[-2000:]}")
    lines = [json.loads(line) for line in run.stdout.splitlines() if line.strip()]
    return pl.DataFrame(
        {
            "image_id": [Path(r["id"]).stem for r in lines],
            "probability": [r["probability"] for r in lines],
            "predicted": [r["label"] for r in lines],
        }
    )


def main() -> None:
    paths = load_paths(load_params())
    index = read_index(Path(paths.prepared))
    test = index.filter((pl.col("split") == "test") & pl.col("label").is_not_null())
    with tempfile.TemporaryDirectory() as tmp:
        write_files(test, Path(paths.raw), Path(tmp))
        answers = predict_folder(Path(tmp)).join(test.select("image_id", "label", "group"), on="image_id")
    y, p = answers["label"].to_numpy(), answers["probability"].to_numpy()
    threshold = json.loads((Path(paths.submission) / "ensemble.json").read_text())["threshold"]
    scores = metrics_with_ci(y, p, threshold=threshold, groups=answers["group"].to_numpy())
    out = {
        k: scores[k]
        for k in ("n", "threshold", "mcc", "mcc_lo", "mcc_hi", "roc_auc", "roc_auc_lo", "roc_auc_hi")
    }
    out["roadwork_answers"] = int(answers["predicted"].sum())
    save_json(out, Path("experiments/results/served.json"))
    print(
        "served, test images as plain files: "
        f"MCC {out['mcc']:.3f} [{out['mcc_lo']:.3f}, {out['mcc_hi']:.3f}], "
        f"ROC-AUC {out['roc_auc']:.3f} [{out['roc_auc_lo']:.3f}, {out['roc_auc_hi']:.3f}], "
        f"{out['roadwork_answers']} of {out['n']} answered roadwork"
    )


if __name__ == "__main__":
    main()
