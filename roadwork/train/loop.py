"""The training loop on cached features, shared by every head.

AdamW, linear warmup (capped at a fraction of the run) then cosine, gradient accumulation, clipping,
bf16 autocast, GPS-weighted sampling, one augmentation copy per view per epoch, early stopping on
validation MCC. The best state is kept in memory and returned; the caller saves it.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from roadwork.device import resolve_device
from roadwork.metrics import binary_metrics, sigmoid
from roadwork.progress import progress
from roadwork.train.config import TrainConfig
from roadwork.train.data import Table
from roadwork.train.losses import HeadLoss

LossFn = Callable[[dict[str, torch.Tensor], dict[str, torch.Tensor]], tuple[torch.Tensor, dict[str, float]]]


def loss_for(config: TrainConfig) -> LossFn:
    """Cross-entropy for the MLP baseline; the weighted four-term loss for the full head."""
    if config.model == "mlp":
        return classification_loss
    return HeadLoss(
        config.loss_weights,
        focal_gamma=config.focal_gamma,
        focal_alpha=config.focal_alpha,
        label_smoothing=config.label_smoothing,
    )


def classification_loss(
    outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, dict]:
    """Plain cross-entropy on the image logits (the baseline's loss)."""
    loss = F.cross_entropy(outputs["logits"].float(), batch["label"])
    return loss, {"ce": float(loss.detach())}


@dataclass
class TrainResult:
    """What a run produced."""

    state: dict[str, torch.Tensor]  # the best epoch's weights
    best_epoch: int
    best_val_mcc: float  # validation MCC at the best epoch (the one `select` chose)
    epochs_run: int
    history: list[dict[str, float]] = field(default_factory=list)


def lr_factor(step: int, total: int, config: TrainConfig) -> float:
    """Linear warmup for min(warmup_steps, warmup_cap * total) steps, then cosine decay to 0."""
    warmup = max(1, min(config.warmup_steps, int(config.warmup_cap * total)))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def row_draw_weights(table: Table, config: TrainConfig) -> np.ndarray | None:
    """How often each row is drawn: its GPS weight (the first bracket re-weighted when the member asks
    for it), and the generated images as `generated_share` of all draws; None: uniformly."""
    gps = config.gps_weighting and table.weight is not None
    share = config.generated_share
    generated = table.generated if table.generated is not None and table.generated.any() else None
    if not gps and (share is None or generated is None):
        return None
    weight = table.weight if gps else np.ones(len(table))
    if gps and config.gps_near_weight is not None:
        weight = np.where(table.first_bracket, config.gps_near_weight, weight)
    if share is not None and generated is not None:  # each part's draws in its share, GPS-weighted within
        weight = np.where(
            generated,
            share * weight / weight[generated].sum(),
            (1 - share) * weight / weight[~generated].sum(),
        )
    return weight / weight.sum()


def epoch_order(table: Table, config: TrainConfig, rng: np.random.Generator) -> np.ndarray:
    """Row indices for one epoch: GPS-weighted draws with replacement, or a plain permutation."""
    weight = row_draw_weights(table, config)
    if weight is not None:
        return rng.choice(len(table), size=len(table), replace=True, p=weight)
    return rng.permutation(len(table))


def gate_stats(outputs: dict[str, torch.Tensor]) -> dict[str, float]:
    """How unequal the view-pooling weights are: their max and their entropy relative to uniform."""
    gates = outputs.get("view_gates")
    if gates is None:
        return {}
    gates = gates.detach().float().clamp_min(1e-12)
    entropy = -(gates * gates.log()).sum(-1) / np.log(gates.shape[-1])
    return {"gates_max": float(gates.amax(-1).mean()), "gates_entropy": float(entropy.mean())}


def _autocast(device: torch.device, config: TrainConfig):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.amp == "bf16")


@torch.no_grad()
def predict_with_model(
    *, model: nn.Module, table: Table, config: TrainConfig, batch_size: int = 512
) -> np.ndarray:
    """Roadwork log-odds (logit 1 - logit 0) for every row, on the clean copy of each view."""
    device = next(model.parameters()).device
    model.eval()
    out = []
    for start in range(0, len(table), batch_size):
        batch = table.batch(np.arange(start, min(start + batch_size, len(table))))
        with _autocast(device, config):
            logits = model({k: v.to(device) for k, v in batch.items()})["logits"].float()
        out.append((logits[:, 1] - logits[:, 0]).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def evaluate(model: nn.Module, table: Table, config: TrainConfig) -> dict[str, float]:
    """Validation metrics at threshold 0.5."""
    logit = predict_with_model(model=model, table=table, config=config)
    return binary_metrics(table.label, sigmoid(logit), threshold=0.5)


def train_with_model(
    *,
    model: nn.Module,
    train: Table,
    val: Table,
    config: TrainConfig,
    loss_fn: LossFn = classification_loss,
    log: Callable[[dict[str, float]], None] | None = None,
    fit_input_norm: bool = True,
) -> TrainResult:
    """Train `model` on `train`, early-stop on `val` MCC; returns the best state and the history.

    `fit_input_norm=False` keeps the model's input statistics: fine-tuning a trained head (DoRA) must not
    refit them on the adaptation rows, or every frozen layer would see differently scaled inputs.
    """
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    if fit_input_norm and hasattr(model, "input_norm"):  # standardise inputs with training statistics
        model.input_norm.fit(torch.from_numpy(train.features[:, 0]))
    model.to(device)
    step_model = torch.compile(model) if config.compile else model
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    micro = math.ceil(len(train) / config.batch_size)
    total = config.epochs * math.ceil(micro / config.accumulation)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: lr_factor(s, total, config))
    best = TrainResult(copy.deepcopy(model.state_dict()), -1, -math.inf, 0)
    stale, best_score = 0, -math.inf
    for epoch in progress(range(config.epochs), total=config.epochs, desc="epochs", unit="epoch"):
        model.train()
        order = epoch_order(train, config, rng)
        terms: dict[str, float] = {}
        for k in range(micro):
            idx = order[k * config.batch_size : (k + 1) * config.batch_size]
            drawn = train.batch(
                idx,
                rng if config.aug else None,
                challenge_rate=config.challenge_rate,
                meta_dropout=config.meta_dropout,
            )
            batch = {key: v.to(device) for key, v in drawn.items()}
            with _autocast(device, config):
                outputs = step_model(batch)
            loss, parts = loss_fn(outputs, batch)
            parts = {**parts, **gate_stats(outputs)}
            (loss / config.accumulation).backward()
            for name, value in parts.items():
                terms[name] = terms.get(name, 0.0) + value / micro
            if (k + 1) % config.accumulation == 0 or k + 1 == micro:
                nn.utils.clip_grad_norm_(model.parameters(), config.clip)
                optimiser.step()
                optimiser.zero_grad(set_to_none=True)
                scheduler.step()
        metrics = evaluate(model, val, config)
        record = {
            "epoch": epoch,
            **{f"train/{k}": v for k, v in terms.items()},
            "val/mcc": metrics["mcc"],
            "val/roc_auc": metrics["roc_auc"] or 0.0,
            "val/accuracy": metrics["accuracy"],
            "lr": optimiser.param_groups[0]["lr"],
        }
        if train.near is not None:
            record["sampled_near_share"] = float(train.near[order].mean())
        best.history.append(record)
        if log:
            log(record)
        score = metrics[config.select] or 0.0  # ROC-AUC is None on a one-class validation split
        if score > best_score:
            best.state, best.best_epoch, best.best_val_mcc, best_score, stale = (
                copy.deepcopy(model.state_dict()),
                epoch,
                metrics["mcc"],
                score,
                0,
            )
        else:
            stale += 1
        best.epochs_run = epoch + 1
        if stale >= config.patience:
            break
    model.load_state_dict(best.state)
    return best
