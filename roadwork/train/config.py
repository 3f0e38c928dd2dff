"""The training recipe, shared by every ensemble member; members override some of its keys."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from roadwork.config import ConfigError, from_dict

TOKEN_SETS = {
    "cls": ("cls",),
    "cls+mean": ("cls", "patch_mean"),
    "cls+mean+max": ("cls", "patch_mean", "patch_max"),
}


@dataclass(frozen=True)
class TrainConfig:
    """One member's training run on cached features."""

    model: str  # mlp (the baseline) | head (the full head)
    tokens: str  # pooled tokens forming a view's feature: cls | cls+mean | cls+mean+max
    views: str  # all | global (view 0 only: the no-tiling ablation)
    val_fraction: float  # share of the train split held out for validation, grouped by video / GPS cell
    split_seed: int  # seed of that split; shared by all members so their validation MCCs compare
    seed: int  # model init, sampling, dropout
    epochs: int  # at most this many epochs
    patience: int  # stop after this many epochs without a better validation MCC
    batch_size: int  # rows per micro-batch
    accumulation: int  # micro-batches per optimiser step
    lr: float  # peak AdamW learning rate
    weight_decay: float
    warmup_steps: int  # linear warmup steps ...
    warmup_cap: float  # ... but at most this fraction of all steps (small data)
    clip: float  # gradient-norm clip
    amp: str  # bf16 | none: autocast dtype
    compile: bool  # torch.compile the model
    gps_weighting: bool  # sample training rows by GPS weight (else uniformly)
    aug: bool  # draw one augmentation copy per view each epoch (else the clean copy only)
    metadata: bool  # feed GPS / tags / text to the model
    hidden: int  # hidden width of the MLP
    dropout: float
    device: str  # auto | cpu | cuda

    def __post_init__(self) -> None:
        if self.tokens not in TOKEN_SETS:
            raise ConfigError(f"train.tokens={self.tokens!r}: expected one of {sorted(TOKEN_SETS)}")
        if self.views not in ("all", "global"):
            raise ConfigError(f"train.views={self.views!r}: expected 'all' or 'global'")
        if self.amp not in ("bf16", "none"):
            raise ConfigError(f"train.amp={self.amp!r}: expected 'bf16' or 'none'")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"train.val_fraction={self.val_fraction}: expected a fraction in (0, 1)")


def member_config(params: dict[str, Any], member: str) -> TrainConfig:
    """`train` with the overrides of ensemble member `member`."""
    members = params.get("ensemble", {}).get("members", {})
    if member not in members:
        raise ConfigError(f"ensemble.members has no member {member!r}; known: {sorted(members)}")
    return from_dict(
        TrainConfig, {**params["train"], **(members[member] or {})}, f"ensemble.members.{member}"
    )
