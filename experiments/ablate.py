"""Ablation table: every switch of the head, the loss, the data and the refinements, three seeds each,
with and without metadata, and on validator-style challenges.

Runs in a project whose pipeline has run (`dvc repro`): every row trains one member in-process on the
same caches (features, text, GPS, masks; the challenges' tokens), so a row costs seconds of training,
not a `dvc repro`. Per row and seed it records:
- full: the member with metadata, validation and test MCC (test ROC-AUC too);
- image: the same member trained and evaluated without metadata (`train.metadata: false`);
- validator: the image-only member on the test challenges' real half (every protocol, no
  metadata), rounded at 0.5 after the calibration `submit` would fit on the validation challenges.
The DoRA row adapts the row's full head K-fold on the test split (out-of-fold MCC); the TTA row
re-scores it with FOODS over the TTA cache's augmentations; the truth-masks row rasterises the
generator's polygons into a temporary mask cache. Results go to `<out>.json` as they come (a killed run
resumes), and the table to `docs/ablations.md`, keeping its hand-written reading.

    python -m experiments.ablate                     # every row, seeds 42 7 123
    python -m experiments.ablate --only full no-gafm # some rows
    python -m experiments.ablate --table             # rewrite the table from the saved results
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from roadwork.config import load_params, load_paths, section, subset, to_dict
from roadwork.data.index import read_index
from roadwork.ensemble.calibrate import fit_calibration
from roadwork.ensemble.challenge import read_val_challenges
from roadwork.features.cache import CacheKey
from roadwork.masks.cache import MaskCache, expected_attrs, source_manifest, truth_path
from roadwork.masks.config import MasksConfig
from roadwork.masks.fill import plan_jobs
from roadwork.masks.truth import fill_truth_masks, read_truth
from roadwork.metrics import binary_metrics, sigmoid, validator_metrics
from roadwork.train.config import member_config
from roadwork.train.crossfit import Trained, train_member
from roadwork.train.data import metadata_arrays, null_metadata, open_inputs
from roadwork.train.dora import FinetuneConfig, cross_fit
from roadwork.train.loop import predict_with_model
from roadwork.views.challenges import read_table
from roadwork.views.plan import boxes_by_image, read_plan

SEEDS = (42, 7, 123)
READING = "## Reading"
MLP_VIEWS = {  # the views MLP of config.yaml's real-run list as one model (no crossfit), without its seed
    **{"model": "mlp", "pool": "views", "lr": 1e-3, "dropout": 0.3, "weight_decay": 0.05},
    **{"patience": 8, "select": "roc_auc"},
}
LINEAR = MLP_VIEWS | {"hidden": 0, "dropout": 0.0}  # the `linear` member likewise
ROWS: dict[str, tuple[str, dict[str, Any]]] = {
    "mlp": ("baseline MLP (views pooled, metadata concatenated)", {"model": "mlp", "lr": 1.0e-3}),
    "mlp-views": ("MLP on the views side by side (`mlp_views` of the real-run list, one model)", MLP_VIEWS),
    "linear": ("logistic regression on the views side by side (member `linear`, one model)", LINEAR),
    "linear-crossfit": (
        "member `linear` as configured: cross-fitted, 5 fold models",
        LINEAR | {"crossfit": True},
    ),
    "mlp-no-tiling": (
        "baseline MLP on the global view only",
        {"model": "mlp", "lr": 1.0e-3, "views": "global"},
    ),
    "linear-no-tiling": (
        "member `linear` as configured, on the global view only",
        LINEAR | {"crossfit": True, "views": "global"},
    ),
    "mlp-crossfit": (
        "baseline MLP cross-fitted, 5 fold models (as the member `mlp` is served)",
        {"model": "mlp", "lr": 1.0e-3, "crossfit": True},
    ),
    "full": ("full head, default recipe", {}),
    "no-tiling": ("global view only (no tiles)", {"views": "global", "pruning": False}),
    "no-pruning": ("all 12 views (no pruning)", {"pruning": False}),
    "no-pyramid": ("without the multi-scale pyramid", {"pyramid": False}),
    "no-gating": ("plain attention (no output gate)", {"gating": False}),
    "no-gafm": ("mean pooling instead of GAFM", {"gafm": False}),
    "tokens-cls": ("view feature = CLS token", {"tokens": "cls"}),
    "tokens-cls+mean": ("view feature = CLS + mean of patches", {"tokens": "cls+mean"}),
    "no-focal": ("loss without the focal term", {"loss_weights": {"focal": 0.0}}),
    "no-consistency": ("loss without multi-view consistency", {"loss_weights": {"consistency": 0.0}}),
    "weather": ("+ the auxiliary weather term (DESIGN's 0.15)", {"loss_weights": {"weather": 0.15}}),
    "no-dice": ("loss without Dice (no mask decoder)", {"masks": False}),
    "dice-truth": ("Dice on the generator's true masks, not SAM 3's", {}),
    "gps-weighting": ("+ GPS-weighted sampling (DESIGN's recipe)", {"gps_weighting": True}),
    "no-aug": ("no augmented or challenge copies (clean views only)", {"aug": False}),
    "no-challenge-copies": ("no validator-style copies", {"challenge_rate": 0.0}),
    "no-meta-dropout": ("no metadata dropout", {"meta_dropout": 0.0}),
    "dora": ("+ DoRA on the test split (out of fold)", {}),
    "tta": ("+ FOODS test-time augmentation", {}),
}


class Context:
    """The caches every row reads, opened once."""

    def __init__(self, params: dict[str, Any]):
        self.params, self.paths = params, load_paths(params)
        self.index = read_index(Path(self.paths.prepared))
        self.inputs = open_inputs(params, masks=True)
        self._truth: MaskCache | None = None
        self.challenges = challenge_tokens(params, self.paths)

    def truth_masks(self) -> MaskCache:
        """A mask cache rasterised from the generator's polygons (built once, in a temporary folder)."""
        if self._truth is None:
            config = dataclasses.replace(section(MasksConfig, self.params, "masks"), source="truth")
            plan, plan_meta = read_plan(Path(self.paths.views))
            source = source_manifest(config, sam_dir=Path(self.paths.sam), raw_root=Path(self.paths.raw))
            folder = Path(tempfile.mkdtemp()) / "truth.zarr"
            attrs = expected_attrs(config, sam=source, plan_meta=plan_meta)
            cache = MaskCache.create(folder, config=config, views=plan_meta["n_views"], attrs=attrs)
            jobs = plan_jobs(self.index, cache, config)
            truth = read_truth(truth_path(Path(self.paths.raw)))
            fill_truth_masks(cache=cache, jobs=jobs, truth=truth, boxes=boxes_by_image(plan), config=config)
            self._truth = cache
        return self._truth


def tokens_key(fingerprint: str, views: Any, key: CacheKey) -> str:
    """What cached challenge tokens depend on: the backbone's weights, the view rule, the view side and
    normalisation (tokens of another backbone or side must not be read back)."""
    parts = [fingerprint, to_dict(views), to_dict(key)]
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]


def challenge_tokens(params: dict[str, Any], paths: Any) -> dict[str, Any]:
    """The challenges' rows and tokens: validation (embedded by the challenge stage) and the test
    challenges' real half (embedded here once, exactly as `roadwork predict` embeds an image)."""
    from roadwork.features.backbone import BackboneDtype, load_backbone
    from roadwork.features.extract import embed_files
    from roadwork.features.manifest import read_manifest
    from roadwork.views.plan import ViewsConfig

    challenge_dir = Path(paths.challenge)
    test = read_table(challenge_dir, "test").filter(pl.col("domain") == "real")
    views, key = section(ViewsConfig, params, "views"), subset(CacheKey, params, "extract")
    fingerprint = read_manifest(Path(paths.backbone), "backbone")["fingerprint"]
    cached = Path(f"experiments/results/ablation-test-challenges-{tokens_key(fingerprint, views, key)}.npy")
    if not cached.is_file():
        model = load_backbone(Path(paths.backbone), subset(BackboneDtype, params, "backbone").dtype, "cpu")
        cached.parent.mkdir(parents=True, exist_ok=True)
        np.save(
            cached, embed_files(model, [challenge_dir / f for f in test["file"]], views=views, config=key)
        )
    return {
        "val": read_val_challenges(challenge_dir, Path(paths.challenge_tokens)),
        "test": (test, np.load(cached)),
    }


def challenge_logits(trained: Trained, config: Any, tokens: np.ndarray, part: str) -> np.ndarray:
    """A trained member's log-odds on challenge tokens, without metadata (as `roadwork predict`); a
    cross-fitted member answers a validation challenge with fold 0 (which held its row out), as
    `submit` does, and a test challenge with the mean of its folds."""
    from roadwork.train.checkpoint import SavedHead

    head = SavedHead("row", trained.model.eval(), {}, trained.vocab, config, trained.heldout)
    n = len(tokens)
    text = (np.zeros((n, 384), np.float32), np.zeros(n, bool))
    folds = np.full(n, 0 if part == "val" else -1, np.int64)
    return head.logits(tokens, metadata_arrays(null_metadata(n), trained.vocab, text), folds)


def validator_score(trained: Trained, config: Any, challenges: dict[str, Any]) -> float:
    """MCC (floored) on the test challenges' real half, averaged over the protocols, after the
    calibration fitted on the validation challenges of every protocol."""
    val_rows, val_tokens = challenges["val"]
    test_rows, test_tokens = challenges["test"]
    val_logit = challenge_logits(trained, config, val_tokens, "val")
    calibration = fit_calibration(val_logit, val_rows["label"].to_numpy())
    prob = calibration.probability(challenge_logits(trained, config, test_tokens, "test"))
    protocols = test_rows["protocol"].to_numpy()
    return float(
        np.mean(
            [
                validator_metrics(test_rows["label"].to_numpy()[protocols == p], prob[protocols == p], n=1)[
                    "mcc"
                ]
                for p in np.unique(protocols)
            ]
        )
    )


def scores(model: torch.nn.Module, table: Any, config: Any) -> dict[str, float]:
    logit = predict_with_model(model=model, table=table, config=config)
    out = binary_metrics(table.label, sigmoid(logit))
    return {"mcc": out["mcc"], "auc": out["roc_auc"]}


def refinement(ctx: Context, name: str, model: torch.nn.Module, config: Any, tables: dict) -> float | None:
    """The DoRA or TTA row's test MCC of the full head (None for other rows)."""
    if name == "dora":
        fit = cross_fit(
            base=model,
            table=tables["test"],
            config=section(FinetuneConfig, ctx.params, "finetune"),
            member=config,
        )
        held = fit.fold_of >= 0
        return binary_metrics(tables["test"].label[held], sigmoid(fit.oof_logit[held]))["mcc"]
    if name == "tta":
        from roadwork.features.cache import ExtractConfig
        from roadwork.features.manifest import read_manifest
        from roadwork.tta import TtaConfig
        from roadwork.tta.extract import open_checked, tta_attrs
        from roadwork.tta.heads import MemberTTA, Variant
        from roadwork.tta.run import score as feed

        tta = section(TtaConfig, ctx.params, "tta")
        _, plan_meta = read_plan(Path(ctx.paths.views))
        extract = section(ExtractConfig, ctx.params, "extract")
        attrs = tta_attrs(
            extract, backbone=read_manifest(Path(ctx.paths.backbone), "backbone"), plan_meta=plan_meta
        )
        caches = open_checked(Path(ctx.paths.tta), tta.augmentations, attrs)
        test = tables["test"]
        member = MemberTTA(
            name,
            config=config,
            rows=test,
            train=tables["train"],
            variants=[Variant("plain", [model], np.zeros(len(test), np.int64))],
            tta=tta,
        )
        feed([member], caches, tta.augmentations)
        frame, _ = member.frames("test")["plain"]
        labelled = frame.filter(pl.col("label").is_not_null())
        return binary_metrics(labelled["label"].to_numpy(), labelled["prob"].to_numpy())["mcc"]
    return None


def run_row(ctx: Context, name: str, seed: int) -> dict[str, Any]:
    """One row, one seed: the member with and without metadata, and its refinement if any."""
    out: dict[str, Any] = {}
    for mode, metadata in (("full", True), ("image", False)):
        overrides = {**ROWS[name][1], "seed": seed, "metadata": metadata}
        config = member_config(ctx.params["train"], overrides, name)
        masks = None
        if config.model == "head" and config.masks:
            masks = ctx.truth_masks() if name == "dice-truth" else ctx.inputs.masks
        torch.manual_seed(seed)
        trained = train_member(ctx.index, config=config, inputs=dataclasses.replace(ctx.inputs, masks=masks))
        model, tables = trained.model, trained.tables
        out[mode] = {"val_mcc": scores(model, tables["val"], config)["mcc"]} | {
            f"test_{k}": v for k, v in scores(model, tables["test"], config).items()
        }
        if mode == "image":
            out["validator_mcc"] = validator_score(trained, config, ctx.challenges)
        elif name in ("dora", "tta"):
            out["refined_test_mcc"] = refinement(ctx, name, model, config, tables)
    return out


def spread(values: list[float | None]) -> str:
    """mean [min, max] over seeds."""
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    return f"{np.mean(values):.3f} [{min(values):.3f}, {max(values):.3f}]"


def pretrained(model: str) -> str:
    """' (N pretraining steps, weights fingerprint F)' for a backbone the project pretrained, else ''."""
    record = Path(model) / "pretrain.json"
    if not record.is_file():
        return ""
    record = json.loads(record.read_text())
    return f" ({record['steps']:,} pretraining steps, weights fingerprint {record['fingerprint'][:8]})"


def write_table(results: dict[str, dict[str, Any]], out: Path) -> None:
    params = load_params()
    synth, extract = params["synth"], params["extract"]
    lines = [
        "# Ablations",
        "",
        f"Generated by `python -m experiments.ablate` on {datetime.date.today()}: each row trains one member",
        f"on the same caches with seeds {', '.join(map(str, SEEDS))}; each cell is the mean over the seeds",
        "and, in brackets, the lowest and highest. MCC at threshold 0.5 (validator: rounded at 0.5 after",
        "the calibration fitted on the validation challenges). Validation = the grouped 20 % of the train",
        "split, test = the test split (never used for any choice), validator = the test challenges'",
        "real half, averaged over the protocols of `validate.protocols`.",
        "",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, {platform.system()}, Python "
        f"{platform.python_version()}, no GPU",
        f"- data: the embedded default, synthetic {synth['rows']['train']} train + "
        f"{synth['rows']['test']} test images, scale {synth['scale']}, seed {synth['seed']}; backbone "
        f"`{params['backbone']['model']}`{pretrained(params['backbone']['model'])}; view side "
        f"{extract['side']}, {extract['aug_copies']} augmented + "
        f"{extract.get('challenge_copies', 0)} validator-style copies per training image",
        "",
        "| row | what | val MCC (metadata) | test MCC (metadata) | test MCC (image only) | test ROC-AUC "
        "(image only) | validator MCC (image only) | refined test MCC |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, (what, _) in ROWS.items():
        runs = [results.get(f"{name}/{seed}") for seed in SEEDS]
        runs = [r for r in runs if r]
        if not runs:
            lines.append(f"| {name} | {what} | not run | | | | | |")
            continue
        cells = [
            spread([r["full"]["val_mcc"] for r in runs]),
            spread([r["full"]["test_mcc"] for r in runs]),
            spread([r["image"]["test_mcc"] for r in runs]),
            spread([r["image"]["test_auc"] for r in runs]),
            spread([r["validator_mcc"] for r in runs]),
            spread([r.get("refined_test_mcc") for r in runs]),
        ]
        partial = f" ({len(runs)} of {len(SEEDS)} seeds)" if len(runs) < len(SEEDS) else ""
        lines.append(f"| {name} | {what}{partial} | " + " | ".join(cells) + " |")
    if out.is_file() and READING in out.read_text():  # keep the hand-written reading
        lines += ["", READING + out.read_text().split(READING, 1)[1].rstrip()]
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", nargs="+", choices=sorted(ROWS), help="rows to run (default: all)")
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--results", type=Path, default=Path("experiments/results/ablations.json"))
    parser.add_argument("--out", type=Path, default=Path("docs/ablations.md"))
    parser.add_argument("--table", action="store_true", help="only rewrite the table from saved results")
    args = parser.parse_args()
    results = json.loads(args.results.read_text()) if args.results.is_file() else {}
    if not args.table:
        ctx = Context(load_params())
        for name in args.only or list(ROWS):
            for seed in args.seeds:
                key = f"{name}/{seed}"
                if key in results:  # done in an earlier (maybe killed) run
                    continue
                results[key] = run_row(ctx, name, seed)
                args.results.parent.mkdir(parents=True, exist_ok=True)
                args.results.write_text(json.dumps(results, indent=1) + "\n")
                print(f"{key}: {json.dumps(results[key])}", flush=True)
    write_table(results, args.out)


if __name__ == "__main__":
    main()
