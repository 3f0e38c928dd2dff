"""Ablation harness: one DVC experiment per row, then a table of validation and test MCC.

Each row replaces the ensemble by a single member `full` with the row's overrides of `train` (and,
for a few rows, of other params), queues `dvc exp run` for it, runs the queue, and reads every
experiment's `metrics/final.json`. DoRA and TTA are switched off (`finetune.members=[]`,
`tta.members=[]`): the rows compare heads. The caches (features, text, GPS, masks) are shared; only a
row that changes `masks.*` rebuilds the mask cache.

    python bench/ablate.py                 # queue, run and write docs/ablations.md
    python bench/ablate.py --only full mlp # a subset of rows
    python bench/ablate.py --collect       # rewrite the table from experiments already run
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

from roadwork.config import load_params

PREFIX = "abl-"
READING = "## Reading"
ROWS: dict[str, tuple[str, dict]] = {
    # name: (what it tests, overrides of `train` for the single member)
    "mlp": ("baseline MLP (views pooled, metadata concatenated)", {"model": "mlp", "lr": 1.0e-3}),
    "full": ("full head, default recipe", {}),
    "full-seed7": ("full head, another seed (seed noise)", {"seed": 7}),
    "full-seed123": ("full head, a third seed (seed noise)", {"seed": 123}),
    "no-gps-weighting": ("without GPS-weighted sampling", {"gps_weighting": False}),
    "no-aug": ("without augmentation copies (clean views only)", {"aug": False}),
    "no-tiling": ("without tiling (global view only)", {"views": "global", "pruning": False}),
    "no-pruning": ("without view pruning (all 12 views)", {"pruning": False}),
    "no-pyramid": ("without the multi-scale pyramid", {"pyramid": False}),
    "no-gating": ("without attention gating (plain attention)", {"gating": False}),
    "no-gafm": ("without GAFM (mean pooling)", {"gafm": False}),
    "no-metadata": ("without metadata (image only)", {"metadata": False}),
    "mlp-no-metadata": ("baseline MLP, image only", {"model": "mlp", "lr": 1.0e-3, "metadata": False}),
    "no-text": ("without the scene-description text", {"text": False}),
    "no-focal": ("loss without the focal term", {"loss_weights": {"focal": 0.0}}),
    "no-consistency": (
        "loss without the multi-view consistency term",
        {"loss_weights": {"consistency": 0.0}},
    ),
    "no-weather": ("loss without the auxiliary weather term", {"loss_weights": {"weather": 0.0}}),
    "tokens-cls": ("view feature = CLS token", {"tokens": "cls"}),
    "tokens-cls+mean": ("view feature = CLS + mean of patches", {"tokens": "cls+mean"}),
    "no-dice": ("loss without the Dice term (no mask decoder)", {"masks": False}),
}
# Overrides outside `train` for some rows.
OTHER: dict[str, dict[str, object]] = {
    "dice-truth": {"masks.source": "truth"},
}
ROWS["dice-truth"] = ("Dice on the generator's true object masks instead of SAM 3's", {})
# Every row: the head alone, without DoRA fine-tuning or TTA.
COMMON = ("ensemble.top_k=1", "config.yaml:finetune.members=[]", "config.yaml:tta.members=[]")


def dvc(*args: str) -> str:
    done = subprocess.run(["dvc", *args], capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"dvc {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def to_hydra(value: object) -> str:
    """A Python value in DVC's `-S` (Hydra) override syntax."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {to_hydra(v)}" for k, v in value.items()) + "}"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def queue(rows: list[str]) -> None:
    for name in rows:
        member = to_hydra({"full": ROWS[name][1]})
        overrides = ["config.yaml:~ensemble.members", f"config.yaml:+ensemble.members={member}", *COMMON]
        overrides += [f"config.yaml:{key}={to_hydra(value)}" for key, value in OTHER.get(name, {}).items()]
        dvc("exp", "run", "--queue", "-n", PREFIX + name, *(arg for o in overrides for arg in ("-S", o)))
        print(f"queued {PREFIX}{name}", flush=True)


def collect() -> dict[str, dict]:
    """`metrics/final.json` of every experiment named `abl-*` (the newest of each name).

    Read from the experiment's commit (the file is tracked by git), since `dvc exp show` drops lists.
    """
    shown = json.loads(dvc("exp", "show", "--json", "--no-fetch", "--all-commits"))
    found: dict[str, dict] = {}
    for commit in shown:
        for exp in commit.get("experiments") or []:
            for rev in exp.get("revs") or []:
                name = rev.get("name") or ""
                if not name.startswith(PREFIX) or name[len(PREFIX) :] in found:
                    continue
                shown_file = subprocess.run(
                    ["git", "show", f"{rev['rev']}:metrics/final.json"], capture_output=True, text=True
                )
                if shown_file.returncode == 0:
                    found[name[len(PREFIX) :]] = json.loads(shown_file.stdout)
    return found


def cell(scores: dict | None) -> str:
    if not scores:
        return "n/a"
    # Intervals are `mcc_lo`/`mcc_hi`; runs made before that change stored a list `mcc_ci`.
    lo, hi = scores["mcc_ci"] if "mcc_ci" in scores else (scores["mcc_lo"], scores["mcc_hi"])
    return f"{scores['mcc']:.3f} [{lo:.3f}, {hi:.3f}]"


def write_table(results: dict[str, dict], out: Path) -> None:
    params = load_params()
    synth, extract = params["synth"], params["extract"]
    lines = [
        "# Ablations",
        "",
        f"Generated by `python bench/ablate.py` on {datetime.date.today()}: one DVC experiment per row, each",
        "a single member trained on the same caches; MCC at threshold 0.5 with 95 % bootstrap intervals",
        "over videos (`submit.bootstrap` resamples). Validation = grouped 20 % of the train split; test =",
        "the test split (never used for any choice).",
        "",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, {platform.system()}, Python "
        f"{platform.python_version()}, no GPU",
        f"- data: the embedded default, synthetic {synth['rows']['train']} train + "
        f"{synth['rows']['test']} test images, scale {synth['scale']}, seed "
        f"{synth['seed']}; backbone `{params['backbone']['model']}` (random weights); view side "
        f"{extract['side']}, {extract['aug_copies']} augmented copy per training image",
        "",
        "| row | what | val MCC [95 % CI] | test MCC [95 % CI] | test ROC-AUC |",
        "|---|---|---|---|---|",
    ]
    for name, (what, _) in ROWS.items():
        final = results.get(name)
        if final is None:
            lines.append(f"| {name} | {what} | not run | not run | |")
            continue
        auc = final["test"]["roc_auc"] if final.get("test") else None
        lines.append(
            f"| {name} | {what} | {cell(final.get('val'))} | {cell(final.get('test'))} | "
            f"{'n/a' if auc is None else f'{auc:.3f}'} |"
        )
    # Keep the hand-written reading of the table (everything from READING on) across regenerations.
    if out.is_file() and READING in out.read_text():
        lines += ["", READING + out.read_text().split(READING, 1)[1].rstrip()]
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", nargs="+", choices=sorted(ROWS), help="rows to run (default: all)")
    parser.add_argument("--collect", action="store_true", help="only rebuild the table from finished runs")
    parser.add_argument("--out", type=Path, default=Path("docs/ablations.md"))
    args = parser.parse_args()
    if not args.collect:
        queue(args.only or list(ROWS))
        dvc("exp", "run", "--run-all", "--jobs", "1")
    write_table(collect(), args.out)


if __name__ == "__main__":
    main()
