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
    crossfit: bool  # one model per fold of that split (fold 0 holds out the validation rows), served as
    # their mean: every labelled row trains the member (roadwork/train/crossfit.py); MLP members only
    seed: int  # model init, sampling, dropout
    epochs: int  # at most this many epochs
    patience: int  # stop after this many epochs without a better validation score (`select`)
    select: str  # the validation score that picks the best epoch: mcc (at 0.5) | roc_auc
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
    meta_dropout: float  # a training row's metadata all NULL with this probability (as a validator sends)
    challenge_rate: float  # share of draws of a training row that take a validator-style copy (224 px
    # JPEG of a random level, no metadata), when the feature cache has them (`extract.challenge_copies`)
    gps_near_weight: float | None  # sampling weight of rows in the first GPS bracket (null: gps stage's)
    generated_share: float | None  # share of an epoch's draws that are generated images (the `generate`
    # stage's, of training sources only); null: as many as there are, drawn like any row; 0: none
    hidden: int  # hidden width of the MLP baseline (0: linear, a logistic regression)
    pool: str  # the MLP's view pooling: meanmax (mean and max over views) | views (concatenated in order)
    dropout: float
    # --- the full head (model: head); see roadwork/models/head.py
    width: int  # token / embedding width
    layers: int  # gated-attention blocks
    heads: int  # attention heads (head_dim = width // heads)
    pruning: bool  # learned view pruning, keeping round(keep_ratio * V) views
    keep_ratio: float
    pyramid: bool  # multi-scale projection pyramid
    gating: bool  # sigmoid output gate in attention (off: plain attention)
    rope: bool  # rotary position embedding over the view index
    gafm: bool  # gated attention fusion of views (off: mean pooling)
    text: bool  # the scene-description slot of the metadata encoder
    masks: bool  # SAM 3 pseudo-masks as targets of the per-view mask decoder (the Dice term)
    # --- the loss of the full head; terms with weight 0 are dropped and the rest renormalise
    loss_weights: dict[str, float]  # focal, consistency, weather, dice
    focal_gamma: float
    focal_alpha: float  # weight of the roadwork class in the focal term
    label_smoothing: float
    device: str  # auto | cpu | cuda

    def __post_init__(self) -> None:
        if self.tokens not in TOKEN_SETS:
            raise ConfigError(f"train.tokens={self.tokens!r}: expected one of {sorted(TOKEN_SETS)}")
        if self.views not in ("all", "global"):
            raise ConfigError(f"train.views={self.views!r}: expected 'all' or 'global'")
        if self.amp not in ("bf16", "none"):
            raise ConfigError(f"train.amp={self.amp!r}: expected 'bf16' or 'none'")
        if self.select not in ("mcc", "roc_auc"):
            raise ConfigError(f"train.select={self.select!r}: expected 'mcc' or 'roc_auc'")
        if self.model not in ("mlp", "head"):
            raise ConfigError(f"train.model={self.model!r}: expected 'mlp' or 'head'")
        if self.crossfit and self.model != "mlp":
            raise ConfigError(
                "train.crossfit: MLP members only (a full head would train once per fold, and DoRA, TTA "
                "and the report's view gates read one full head)"
            )
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"train.val_fraction={self.val_fraction}: expected a fraction in (0, 1)")
        if self.generated_share is not None and not 0.0 <= self.generated_share < 1.0:
            raise ConfigError(
                f"train.generated_share={self.generated_share}: expected null or a share in [0, 1)"
            )
        for name in ("meta_dropout", "challenge_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"train.{name}={getattr(self, name)}: expected a probability in [0, 1]")

    def model_spec(
        self,
        *,
        view_dim: int,
        n_views: int,
        vocab_sizes: dict[str, int],
        mask_shape: tuple[int, int] | None = None,
    ) -> dict[str, Any]:
        """The spec `roadwork.models.build_model` takes (saved in the checkpoint).

        `mask_shape` (prompts, grid) of the training masks adds the head's per-view mask decoder.
        """
        common = {"view_dim": view_dim, "n_views": n_views, "vocab_sizes": vocab_sizes}
        common |= {"dropout": self.dropout, "metadata": self.metadata}
        if self.model == "mlp":
            return {"model": "mlp", "hidden": self.hidden, "pool": self.pool, **common}
        head_keys = ("width", "layers", "heads", "pruning", "keep_ratio", "pyramid", "gating", "rope", "gafm")
        spec = {"model": "head", "text": self.text, **common, **{k: getattr(self, k) for k in head_keys}}
        if mask_shape is not None:
            spec |= {"n_prompts": mask_shape[0], "mask_grid": mask_shape[1]}
        return spec


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Deep merge: a member may override one loss weight without restating the others."""
    out = dict(base)
    for key, value in overrides.items():
        out[key] = (
            _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def member_config_of(params: dict[str, Any], member: str) -> TrainConfig:
    """Ensemble member `member`'s config from a `train@<member>` stage's share of the configuration."""
    return member_config(params["train"], params["ensemble"]["members"][member], member)


def member_config(train: dict[str, Any], overrides: dict[str, Any] | None, member: str) -> TrainConfig:
    """The `train` section (raw, as read from params.yaml) with ensemble member `member`'s overrides."""
    return from_dict(TrainConfig, _merge(train, overrides or {}), f"ensemble.members.{member}")
