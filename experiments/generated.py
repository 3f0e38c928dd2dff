"""The generated half: does training on generated images help, and how many? Three seeds a row.

Runs in a project whose pipeline has run with `generate` (its generated training rows in the feature
cache). Every row trains the member `mlp` as configured (cross-fitted, on pixels alone) in-process with
one `train.generated_share`, then scores it as `submit` and `validate` would: the small images' route
(crop, letterbox) and the native-size route each calibrated on their validation challenges, the test
challenges of every protocol and half answered at 0.5. The backbone is the project's: run it once per
backbone (`--label` names it in the table) to compare pretraining recipes.

    python -m experiments.generated --label "shipped backbone"     # rows appended to the results
    python -m experiments.generated --table                        # only rewrite the table

The table goes into docs/ablations.md as its last section (`SECTION`), replaced on every run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from experiments.ablate import Context, challenge_logits, spread, tokens_key
from roadwork.config import load_params, section, subset
from roadwork.ensemble.calibrate import fit_calibration
from roadwork.features.backbone import BackboneDtype, load_backbone
from roadwork.features.cache import CacheKey
from roadwork.features.extract import embed_files
from roadwork.features.manifest import read_manifest
from roadwork.metrics import validator_metrics
from roadwork.train.config import member_config
from roadwork.train.crossfit import train_member
from roadwork.views.challenges import read_table
from roadwork.views.plan import ViewsConfig

SEEDS = (42, 7, 2026)
SECTION = "## The generated half (`python -m experiments.generated`)"
SHARES: dict[str, float | None] = {"none": 0.0, "natural": None, "0.25": 0.25, "0.5": 0.5}
ROUTES = {("crop", "letterbox"): "small", ("native",): "large"}
CELLS = [(p, h) for p in ("crop", "letterbox", "native") for h in ("real", "generated")]


def test_tokens(ctx: Context) -> tuple[pl.DataFrame, np.ndarray]:
    """Every test challenge and its tokens, embedded once per backbone and view rule, as `roadwork
    predict` embeds an image."""
    params, paths = ctx.params, ctx.paths
    views, key = section(ViewsConfig, params, "views"), subset(CacheKey, params, "extract")
    fingerprint = read_manifest(Path(paths.backbone), "backbone")["fingerprint"]
    table = read_table(Path(paths.challenge), "test")
    cached = Path(f"experiments/results/test-challenges-{tokens_key(fingerprint, views, key)}.npy")
    if not cached.is_file():
        dtype = subset(BackboneDtype, params, "backbone").dtype
        model = load_backbone(Path(paths.backbone), dtype, "cpu")
        cached.parent.mkdir(parents=True, exist_ok=True)
        files = [Path(paths.challenge) / f for f in table["file"]]
        np.save(cached, embed_files(model, files, views=views, config=key))
    return table, np.load(cached)


def score_row(ctx: Context, share: float | None, seed: int, test: tuple[pl.DataFrame, np.ndarray]) -> dict:
    """The member trained with `generated_share` = `share`, scored per protocol and half."""
    overrides = {**ctx.params["ensemble"]["members"]["mlp"], "seed": seed, "metadata": False}
    config = member_config(ctx.params["train"] | {"generated_share": share}, overrides, "mlp")
    torch.manual_seed(seed)
    trained = train_member(ctx.index, config=config, inputs=dataclasses.replace(ctx.inputs, masks=None))
    val_rows, val_tokens = ctx.challenges["val"]
    test_rows, test_tokens = test
    val_logit = challenge_logits(trained, config, val_tokens, "val")
    test_logit = challenge_logits(trained, config, test_tokens, "test")
    out: dict[str, Any] = {}
    for protocols in ROUTES:
        fit = val_rows["protocol"].is_in(list(protocols)).to_numpy()
        calibration = fit_calibration(val_logit[fit], val_rows["label"].to_numpy()[fit])
        for protocol, half in CELLS:
            if protocol in protocols:
                rows = ((test_rows["protocol"] == protocol) & (test_rows["domain"] == half)).to_numpy()
                prob = calibration.probability(test_logit[rows])
                out[f"{protocol}/{half}"] = validator_metrics(test_rows["label"].to_numpy()[rows], prob, n=1)[
                    "mcc"
                ]
    return out


def table(results: dict[str, dict[str, Any]]) -> str:
    """The rows as markdown: mean [min, max] over the seeds per protocol and half."""
    head = " | ".join(f"{p}, {h}" for p, h in CELLS)
    lines = [f"| backbone | generated_share | {head} |", "|---|---|" + "---|" * len(CELLS)]
    for label in dict.fromkeys(key.split("|")[0] for key in results):
        for name in SHARES:
            runs = [results.get(f"{label}|{name}|{seed}") for seed in SEEDS]
            runs = [r for r in runs if r]
            if runs:
                cells = " | ".join(spread([r[f"{p}/{h}"] for r in runs]) for p, h in CELLS)
                lines.append(f"| {label} | {name} | {cells} |")
    return "\n".join(lines) + "\n"


def write_section(text: str, out: Path) -> None:
    """`text` as the last section of `out` (replacing the section of an earlier run)."""
    head = out.read_text().split(SECTION, 1)[0].rstrip() if out.is_file() else "# Ablations"
    intro = (
        "Each row trains the member `mlp` as configured (cross-fitted, pixels alone) with one\n"
        "`train.generated_share` (none: 0; natural: as many generated rows as there are), seeds "
        f"{', '.join(map(str, SEEDS))};\neach route calibrated on its validation challenges, the test "
        "challenges answered at 0.5:\nMCC mean [min, max] over the seeds, per protocol and half. "
        "2 cores, no GPU.\n"
    )
    out.write_text(f"{head}\n\n{SECTION}\n\n{intro}\n{text}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--label", default="project backbone", help="the backbone's name in the table")
    parser.add_argument("--shares", nargs="+", choices=sorted(SHARES), default=list(SHARES))
    parser.add_argument("--results", type=Path, default=Path("experiments/results/generated.json"))
    parser.add_argument("--table", action="store_true", help="only rewrite the table from saved results")
    parser.add_argument("--out", type=Path, default=Path("docs/ablations.md"))
    args = parser.parse_args()
    results = json.loads(args.results.read_text()) if args.results.is_file() else {}
    if not args.table:
        ctx = Context(load_params())
        test = test_tokens(ctx)
        for name in args.shares:
            for seed in SEEDS:
                key = f"{args.label}|{name}|{seed}"
                if key not in results:  # done in an earlier (maybe killed) run
                    results[key] = score_row(ctx, SHARES[name], seed, test)
                    args.results.parent.mkdir(parents=True, exist_ok=True)
                    args.results.write_text(json.dumps(results, indent=1) + "\n")
                    print(f"{key}: {json.dumps(results[key])}", flush=True)
    write_section(table(results), args.out)
    print(table(results))


if __name__ == "__main__":
    main()
