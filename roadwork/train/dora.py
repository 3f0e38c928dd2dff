"""DoRA fine-tuning of a trained head on a labelled adaptation split, K-fold, measured out of fold.

The adaptation split (NATIX `test`) is also the split the pipeline is scored on, so a head adapted to it
may only predict rows it never trained on. The split's labelled rows are dealt into K folds, whole groups
(videos) at a time and stratified by label. Fold k's adapter trains on the other K-1 folds and predicts
fold k; its early-stopping validation set is carved (again by whole groups) out of those K-1 training
folds, never out of fold k, so the held-out fold influences neither the weights nor the choice of epoch.
Every labelled row is thus predicted exactly once by a model that never saw it (`check_out_of_fold`
enforces it). Rows of other splits, and unlabelled rows, get the mean logit of the K adapted models.

DoRA is `LoraConfig(use_dora=True)` (peft has no DoraConfig) on the attention projections `qkv_proj` and
`out_proj`; every other weight is frozen and the head's input statistics are kept as trained (refitting
them on the adaptation rows would move every frozen layer's inputs).

`adapter_report` lists adapters that never received a gradient (an adapter on a layer the forward pass
bypasses) instead of hiding them. This module is the mechanics on one head's Table; `roadwork.train.adapt`
runs it for a trained member (its caches, its prediction files) and is its only caller in the library.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from sklearn.model_selection import StratifiedGroupKFold
from torch import nn

from roadwork.config import ConfigError
from roadwork.metrics import mcc
from roadwork.progress import progress
from roadwork.train.checkpoint import load_head
from roadwork.train.config import TrainConfig
from roadwork.train.data import Table, split_train_val
from roadwork.train.loop import TrainResult, loss_for, predict_with_model, train_with_model

FOLD_DIR = "fold{k}"
FOLDS_FILE = "folds.parquet"


@dataclass(frozen=True)
class FinetuneConfig:
    """params.yaml `finetune:`."""

    split: str  # labelled adaptation split the folds are cut from (an index split)
    members: tuple[str, ...] | None  # members to adapt; null: the full heads among submit's top_k
    folds: int  # K: each labelled row is held out by exactly one of K adapters
    seed: int  # fold assignment, inner validation split, adapter initialisation, batch order
    val_fraction: float  # share of a fold's training part held out (by group) for early stopping
    r: int  # adapter rank
    lora_alpha: int  # adapter scaling is lora_alpha / r
    lora_dropout: float  # dropout on the adapter's input
    target_modules: tuple[str, ...]  # linear layers (name suffixes) that get adapters
    lr: float  # AdamW peak learning rate (the plan's 1e-6; an ablation knob)
    weight_decay: float
    epochs: int  # at most this many epochs per fold
    patience: int  # stop after this many epochs without a better inner-validation MCC
    device: str  # auto | cpu | cuda

    def __post_init__(self) -> None:
        if self.folds < 2:
            raise ConfigError(f"finetune.folds={self.folds}: need at least 2 folds")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"finetune.val_fraction={self.val_fraction}: expected a fraction in (0, 1)")
        if self.r < 1 or not self.target_modules:
            raise ConfigError("finetune: r must be >= 1 and target_modules non-empty")


class OutOfFoldError(AssertionError):
    """A row predicted twice, never, or by a model that trained on it."""


def dora_config(config: FinetuneConfig) -> LoraConfig:
    """The peft adapter config: LoRA with weight decomposition (DoRA)."""
    return LoraConfig(
        use_dora=True,
        r=config.r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.target_modules),
    )


def attach_dora(base: nn.Module, config: FinetuneConfig, seed: int) -> PeftModel:
    """DoRA adapters on a deep copy of `base` (which stays untouched); seeded adapter initialisation."""
    torch.manual_seed(seed)
    return get_peft_model(copy.deepcopy(base), dora_config(config))


def adapter_report(model: PeftModel) -> dict[str, object]:
    """Trainable parameters against the base head's, the adapted modules, and adapters that never moved.

    Call after training: an adapter whose LoRA B matrix is still all zeros received no update.
    """
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    base = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)
    adapted, idle = [], []
    for name, module in model.get_base_model().named_modules():
        lora_b = getattr(module, "lora_B", None)
        if isinstance(lora_b, nn.ModuleDict) and lora_b:
            adapted.append(name)
            if all(bool((b.weight == 0).all()) for b in lora_b.values()):
                idle.append(name)
    return {
        "trainable_params": trainable,
        "base_params": base,
        "trainable_share": trainable / base,
        "adapted_modules": adapted,
        "idle_adapters": idle,
    }


def assign_folds(label: np.ndarray, groups: list[str], k: int, seed: int) -> np.ndarray:
    """Fold 0..k-1 per row with label >= 0 (grouped, stratified); -1 for unlabelled rows."""
    fold = np.full(len(label), -1, dtype=np.int64)
    labelled = np.flatnonzero(label >= 0)
    n_groups = len({groups[i] for i in labelled})
    if n_groups < k:
        raise ValueError(f"finetune.folds={k}: the adaptation split has only {n_groups} labelled group(s)")
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    group_of = np.asarray(groups, dtype=object)[labelled]
    for f, (_, held) in enumerate(splitter.split(np.zeros(len(labelled)), label[labelled], group_of)):
        fold[labelled[held]] = f
    return fold


def fold_train_config(member: TrainConfig, config: FinetuneConfig, fold: int) -> TrainConfig:
    """The member's recipe with the fine-tuning optimiser settings (its loss, batch and warmup stay)."""
    return dataclasses.replace(
        member,
        lr=config.lr,
        weight_decay=config.weight_decay,
        epochs=config.epochs,
        patience=config.patience,
        seed=config.seed + fold,
        device=config.device,
        compile=False,  # peft wrappers and a handful of steps: compiling costs more than it saves
        gps_weighting=False,  # adaptation rows carry no GPS sampling weights
    )


@dataclass
class FoldRun:
    """One fold: the adapted model, the rows it trained / validated on, the rows it predicts."""

    fold: int
    model: PeftModel
    fit: np.ndarray  # table rows it trained on
    val: np.ndarray  # table rows of its early-stopping set (from the training folds)
    heldout: np.ndarray  # table rows it predicts
    result: TrainResult
    val_mcc_before: float  # the base head's MCC on the same early-stopping set


def train_fold(
    *,
    base: nn.Module,
    table: Table,
    fold_of: np.ndarray,
    fold: int,
    config: FinetuneConfig,
    member: TrainConfig,
) -> FoldRun:
    """Adapt `base` on every labelled row outside `fold`, early-stopping on a grouped part of them."""
    heldout = np.flatnonzero(fold_of == fold)
    train_rows = np.flatnonzero((fold_of >= 0) & (fold_of != fold))
    inner = pl.DataFrame(
        {"i": train_rows, "label": table.label[train_rows], "group": [table.group[i] for i in train_rows]}
    )
    fit_rows, val_rows = split_train_val(inner, config.val_fraction, config.seed + fold)
    fit, val = fit_rows["i"].to_numpy(), val_rows["i"].to_numpy()
    recipe = fold_train_config(member, config, fold)
    val_table = table.take(val)
    before = predict_with_model(model=base, table=val_table, config=recipe)
    model = attach_dora(base, config, config.seed + fold)
    result = train_with_model(
        model=model,
        train=table.take(fit),
        val=val_table,
        config=recipe,
        loss_fn=loss_for(member),
        fit_input_norm=False,
    )
    model.eval()
    return FoldRun(fold, model, fit, val, heldout, result, mcc(val_table.label, (before > 0).astype(int)))


def check_out_of_fold(n_rows: int, runs: Iterable[FoldRun], labelled: np.ndarray) -> None:
    """Raise OutOfFoldError unless every labelled row is predicted exactly once, by a fold that never
    trained or early-stopped on it, and no unlabelled row is predicted by a fold."""
    count = np.zeros(n_rows, dtype=np.int64)
    for run in runs:
        seen = np.intersect1d(run.heldout, np.concatenate([run.fit, run.val]))
        if len(seen):
            raise OutOfFoldError(f"fold {run.fold} predicts row {int(seen[0])}, which it trained on")
        np.add.at(count, run.heldout, 1)
    wrong = np.flatnonzero(count != labelled.astype(np.int64))
    if len(wrong):
        r = int(wrong[0])
        raise OutOfFoldError(
            f"row {r} is predicted {count[r]} time(s) out of fold; expected {int(labelled[r])}"
        )


@dataclass
class CrossFit:
    """All folds of one member: out-of-fold logits (NaN where a row is in no fold) and fold per row."""

    runs: list[FoldRun]
    fold_of: np.ndarray  # [n] fold holding the row out, -1 for rows in no fold (unlabelled)
    oof_logit: np.ndarray  # [n]


def cross_fit(*, base: nn.Module, table: Table, config: FinetuneConfig, member: TrainConfig) -> CrossFit:
    """Train the K fold adapters of one head and predict every labelled row out of fold."""
    fold_of = assign_folds(table.label, table.group, config.folds, config.seed)
    runs = [
        train_fold(base=base, table=table, fold_of=fold_of, fold=k, config=config, member=member)
        for k in progress(range(config.folds), total=config.folds, desc="DoRA folds", unit="fold")
    ]
    check_out_of_fold(len(table), runs, fold_of >= 0)
    oof = np.full(len(table), np.nan)
    for run in runs:
        recipe = fold_train_config(member, config, run.fold)
        oof[run.heldout] = predict_with_model(model=run.model, table=table.take(run.heldout), config=recipe)
    return CrossFit(runs, fold_of, oof)


def fold_average(models: list[nn.Module], table: Table, config: TrainConfig) -> np.ndarray:
    """Mean logit of the fold models: the adapted prediction for rows no fold held out."""
    if not models:
        raise ValueError("no fold models to average")
    return np.mean([predict_with_model(model=m, table=table, config=config) for m in models], axis=0)


def save_cross_fit(fit: CrossFit, table: Table, out_dir: Path) -> None:
    """`fold<k>/` adapters (peft `save_pretrained`) and `folds.parquet`: each row's role in each fold."""
    out_dir = Path(out_dir)
    records = []
    for run in fit.runs:
        fold_dir = out_dir / FOLD_DIR.format(k=run.fold)
        run.model.save_pretrained(fold_dir)
        _sort_target_modules(fold_dir / "adapter_config.json")
        for role, rows in (("fit", run.fit), ("val", run.val), ("heldout", run.heldout)):
            records += [(table.image_id[r], run.fold, role) for r in rows]
    roles = pl.DataFrame(records, schema=["image_id", "fold", "role"], orient="row")
    roles.write_parquet(out_dir / FOLDS_FILE)


def _sort_target_modules(path: Path) -> None:
    """peft keeps `target_modules` as a set and writes it in hash order, which changes from process to
    process (PYTHONHASHSEED): sorted, the same adapters are the same bytes on every run."""
    config = json.loads(path.read_text())
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def load_fold_models(head_dir: Path, member_dir: Path, device: str | torch.device = "cpu") -> list[PeftModel]:
    """The saved fold adapters of one member on fresh copies of its head, in fold order, eval mode."""
    found = [p for p in Path(member_dir).glob("fold*") if p.is_dir() and p.name[4:].isdigit()]
    dirs = sorted(found, key=lambda p: int(p.name[4:]))
    if not dirs:
        raise FileNotFoundError(f"{member_dir}: no fold adapters; run `dvc repro finetune`")
    base = load_head(Path(head_dir), device).model
    return [PeftModel.from_pretrained(copy.deepcopy(base), d).to(device).eval() for d in dirs]
