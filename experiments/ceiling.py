"""How much roadwork the validator's transforms leave in each challenge: the ceiling of a perfect detector.

A level 1-3 challenge keeps a random 20-100 % of the (rotated) frame, so some roadwork images lose
every roadwork object and still carry the label 1. The generator knows where it drew each object
(`truth_masks.arrow`): this rasterises them, carries the label map through each challenge's own
transform (`challenge_pair`, the same seed and key as the `challenge` stage) and scores a detector
that answers "roadwork" exactly when a roadwork pixel is left. Runs in a project whose `challenge`
stage has run, on the synthetic data (real data has no drawn objects); writes
`experiments/results/ceiling.json` and prints one line per level.

    python -m experiments.ceiling
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import polars as pl
from PIL import Image

from roadwork.config import load_params, load_paths, save_json
from roadwork.data.index import read_index
from roadwork.masks.cache import truth_path
from roadwork.masks.truth import read_truth
from roadwork.metrics import binary_metrics
from roadwork.synth.scene import ROADWORK_KINDS
from roadwork.views.challenges import read_table
from roadwork.views.protocols import LEVELS, challenge_pair, challenge_rng


def roadwork_map(objects: list[dict], width: int, height: int) -> np.ndarray:
    """uint8 [H, W]: 1 where a drawn roadwork object is."""
    out = np.zeros((height, width), np.uint8)
    for obj in objects:
        if obj["kind"] in ROADWORK_KINDS:
            for polygon in obj["polygons"]:
                points = np.round(np.asarray(polygon, np.float64) * 8).astype(np.int32)
                cv2.fillPoly(out, [points], 1, shift=3)
    return out


def left_pixels(table: pl.DataFrame, index: pl.DataFrame, truth: dict, seed: int) -> np.ndarray:
    """Roadwork pixels left in each challenge of `table` (224 x 224), in its order."""
    where = {r[0]: r[1:] for r in index.select("image_id", "shard", "row", "width", "height").iter_rows()}
    out = []
    for file, image_id, protocol, level in table.select("file", "image_id", "protocol", "level").iter_rows():
        shard, row, width, height = where[image_id]
        labels = roadwork_map(truth.get((shard, row), []), width, height)
        blank = Image.new("RGB", (width, height))  # the geometry's draws do not depend on the pixels
        rng = challenge_rng(seed, f"transform/{file}")
        _, left = challenge_pair(blank, labels, level or 0, rng, protocol)
        out.append(int(left.sum()))
    return np.asarray(out)


def main() -> None:
    params = load_params()
    paths = load_paths(params)
    table = read_table(Path(paths.challenge), "test").filter(pl.col("domain") == "real")
    truth = read_truth(truth_path(Path(paths.raw)))
    left = left_pixels(table, read_index(Path(paths.prepared)), truth, params["challenge"]["seed"])
    label, level, protocol = (table[c].to_numpy() for c in ("label", "level", "protocol"))
    out = {}
    cells = [(f"{p}", protocol == p) for p in np.unique(protocol)]
    cells += [
        (f"{p} level {lv}", (protocol == p) & (level == lv)) for p in np.unique(protocol) for lv in LEVELS
    ]
    for name, rows in [(name, rows) for name, rows in cells if rows.any()]:
        y, seen = label[rows], left[rows] > 0
        out[name] = {
            "n": len(y),
            "mcc": binary_metrics(y, seen.astype(float))["mcc"],
            "positives_without_roadwork": float((~seen[y == 1]).mean()),
        }
        print(
            f"{name}: perfect-detector MCC {out[name]['mcc']:.3f}, "
            f"{out[name]['positives_without_roadwork']:.0%} of roadwork challenges show none"
        )
    save_json(out, Path("experiments/results/ceiling.json"))


if __name__ == "__main__":
    main()
