"""The full head on pixels alone against the MLP: one recipe switch at a time, three seeds each.

Every variant is a member trained without metadata, in-process on the caches of a project whose
pipeline has run (as `experiments/ablate.py`'s image-only column), and scored on the validation rows, the
test rows (at log-odds 0, and with the cut moved to the validation rows' best) and the test challenges'
real half (calibrated on the validation challenges, rounded at 0.5).
Results go to `<out>.json` as they come (a killed run resumes); the table is printed as markdown.

    python -m experiments.head_variants                 # every variant
    python -m experiments.head_variants --only mlp ce   # some
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from experiments.ablate import SEEDS, Context, spread, validator_score
from roadwork.config import load_params
from roadwork.ensemble.calibrate import fit_calibration
from roadwork.metrics import binary_metrics, sigmoid
from roadwork.train.config import member_config
from roadwork.train.crossfit import Trained, train_member
from roadwork.train.loop import predict_with_model

CE = {"focal_gamma": 0.0, "focal_alpha": 0.5, "label_smoothing": 0.0}  # focal -> plain cross-entropy
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "full": ("the full head as configured", {}),
    "mlp": ("the baseline MLP (mean and max over views)", {"model": "mlp", "lr": 1.0e-3}),
    "no-dice": ("without the Dice term", {"masks": False}),
    "focal-only": ("the focal term alone", {"masks": False, "loss_weights": {"consistency": 0.0}}),
    "ce": ("cross-entropy instead of focal (no label smoothing)", CE),
    "alpha-0.5": ("focal with balanced class weights", {"focal_alpha": 0.5}),
    "no-pruning": ("all 12 views", {"pruning": False}),
    "layers-2": ("two attention blocks instead of four", {"layers": 2}),
    "lr-1e-3": ("learning rate 1e-3 (the MLP's)", {"lr": 1.0e-3}),
    "regularised": ("dropout 0.3, weight decay 0.05", {"dropout": 0.3, "weight_decay": 0.05}),
    "select-auc": ("best epoch by validation ROC-AUC, patience 8", {"select": "roc_auc", "patience": 8}),
    "full-mean-5": ("the mean log-odds of 5 full heads, seeds s .. s+4", {"average": 5}),
    "mlp-mean-5": (
        "the mean log-odds of 5 MLPs, seeds s .. s+4",
        {"model": "mlp", "lr": 1.0e-3, "average": 5},
    ),
}


class SeedMean(torch.nn.Module):
    """Models trained alike but for their seed, as one: `{"logits"}` is the mean of theirs for every
    row (`FoldMean` would answer a row of a held-out fold with that fold's model alone)."""

    def __init__(self, models: list[torch.nn.Module]):
        super().__init__()
        self.models = torch.nn.ModuleList(models)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"logits": torch.stack([m(batch)["logits"].float() for m in self.models]).mean(dim=0)}


def run(ctx: Context, overrides: dict[str, Any], name: str, seed: int) -> dict[str, float]:
    """One image-only member (or the mean of `average` of them, seeds seed .. seed + average - 1):
    validation and test MCC / ROC-AUC, validator MCC on the real half."""
    overrides = dict(overrides)
    runs = [train_one(ctx, overrides, name, seed + k) for k in range(overrides.pop("average", 1))]
    trained, config = runs[0]
    if len(runs) > 1:
        trained = dataclasses.replace(trained, model=SeedMean([t.model for t, _ in runs]))
    # Each part predicted once: the scores at log-odds 0 and at the validation rows' best cut (as
    # `submit` calibrates an ensemble) both read these.
    tables = {part: trained.tables[part] for part in ("val", "test")}
    logit = {
        part: predict_with_model(model=trained.model, table=t, config=config) for part, t in tables.items()
    }
    out = {}
    for part, table in tables.items():
        at_zero = binary_metrics(table.label, sigmoid(logit[part]))
        out[f"{part}_mcc"], out[f"{part}_auc"] = at_zero["mcc"], at_zero["roc_auc"]
    cut = fit_calibration(logit["val"], tables["val"].label)
    out["test_mcc_cut"] = binary_metrics(tables["test"].label, cut.probability(logit["test"]))["mcc"]
    return out | {"validator_mcc": validator_score(trained, config, ctx.challenges)}


def train_one(ctx: Context, overrides: dict[str, Any], name: str, seed: int) -> tuple[Trained, Any]:
    """One member trained without metadata, and its config."""
    config = member_config(ctx.params["train"], {**overrides, "seed": seed, "metadata": False}, name)
    torch.manual_seed(seed)
    masks = ctx.inputs.masks if config.model == "head" and config.masks else None
    trained = train_member(ctx.index, config=config, inputs=dataclasses.replace(ctx.inputs, masks=masks))
    return trained, config


def table(results: dict[str, dict[str, float]], names: list[str]) -> str:
    keys = ("val_mcc", "val_auc", "test_mcc", "test_mcc_cut", "test_auc", "validator_mcc")
    lines = [
        "| variant | what | val MCC | val ROC-AUC | test MCC | test MCC, cut at the validation best | "
        "test ROC-AUC | validator MCC (real half) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        runs = [results[f"{name}/{s}"] for s in SEEDS if f"{name}/{s}" in results]
        if runs:
            cells = " | ".join(spread([r.get(k) for r in runs]) for k in keys)
            lines.append(f"| {name} | {VARIANTS[name][0]} | {cells} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", nargs="+", choices=sorted(VARIANTS), help="variants (default: all)")
    parser.add_argument("--out", type=Path, default=Path("experiments/results/head_variants.json"))
    args = parser.parse_args()
    names = args.only or list(VARIANTS)
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    ctx = Context(load_params())
    for name in names:
        for seed in SEEDS:
            key = f"{name}/{seed}"
            if key not in results:
                results[key] = run(ctx, VARIANTS[name][1], name, seed)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(results, indent=1) + "\n")
                print(key, json.dumps(results[key]), flush=True)
    print(table(results, names))
    print(f"seeds {', '.join(map(str, SEEDS))}: mean [lowest, highest]")


if __name__ == "__main__":
    main()
