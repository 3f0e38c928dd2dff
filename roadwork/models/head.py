"""The full head on cached view features: pruning, pyramid, gated attention, GAFM, metadata, fusion.

Data flow for a batch (V views of width D; V' = k kept views):

    views [B, V, D] -> InputNorm -> view pruning (top k)      -> [B, V', D]  (+ keep [B, V], view_index)
    -> projection D -> width + multi-scale pyramid            -> [B, V', W]
    -> `layers` gated-attention blocks (RoPE over view index) -> final LayerNorm -> tokens [B, V', W]
    -> GAFM (or mean pooling)                                 -> pooled [B, W], view_gates [B, V']
    -> concat metadata [B, 704] -> fusion Linear + GELU + Dropout -> embedding [B, W]
    -> classifier W -> W/2 -> 2                               -> logits [B, 2]
    tokens -> shared Linear W -> 2                            -> view_logits [B, V', 2]
    pooled -> Linear W -> n_weather                           -> weather_logits [B, n_weather]
    tokens -> MLP W -> 256 -> P*G*G   (n_prompts > 0)         -> mask_logits [B, V', P, G, G]

Also returned: `keep` [B, V] (0/1 mask of the kept views; in training its values are the same 0/1 but it
carries the straight-through gradient of the importance scores), `view_index` [B, V'] (which view each
kept token is, ascending; the Dice loss uses it to pick the mask targets), `view_scores` [B, V] (sigmoid
importance; ones with pruning off) and `embedding` [B, W] (the fused vector before the classifier). The
selection is hard in both modes, so train and eval differ only by dropout.

The weather head reads the pooled *visual* vector, not the fused embedding: the fused embedding contains
the weather tag itself, from which the auxiliary task would be solved by copying the input.

Spec keys (`RoadworkHead(spec)`; unknown keys are an error, missing optional keys take the defaults):
    model         "head" (ignored here; build_model dispatches on it)
    view_dim      D, width of one view's feature (required)
    n_views       V, views per image (required); inputs must match
    vocab_sizes   {"weather", "daytime", "scene_environment"} -> vocabulary size incl. NULL (required)
    width         512  token / embedding width W
    layers        4    gated-attention blocks
    heads         8    attention heads; head_dim = width // heads
    mlp_ratio     4    hidden width of a block's MLP, in multiples of W
    pruning       True view pruning on (False: all V views pass, no scorer parameters)
    keep_ratio    0.67 kept views k = round(keep_ratio * V) (8 of 12)
    pyramid       True multi-scale pyramid after the projection (False: projection only)
    gating        True sigmoid output gate in the attention blocks (False: plain attention)
    rope          True rotary position embedding over the view index in the blocks (False: none)
    rope_base     100.0 RoPE base (small: only ~12 positions)
    gafm          True GAFM fusion (False: mean pooling, uniform view_gates)
    metadata      True metadata encoder (False: the fusion input is the pooled vector alone, W -> W)
    text          True text slot of the metadata (False: metadata is 320 wide, no adapter)
    dropout       0.1  dropout in blocks, GAFM, fusion and classifier
    n_prompts     0    P, prompts of the coarse mask decoder (0: no decoder, no `mask_logits`)
    mask_grid     16   G, side of a coarse mask
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import nn

from roadwork.models.attention import ROPE_BASE, AttentionBlock
from roadwork.models.gafm import GAFM, mean_pool
from roadwork.models.layers import MLP, InputNorm
from roadwork.models.meta import MetadataEncoder
from roadwork.models.pruning import ViewPruning
from roadwork.models.pyramid import ProjectionPyramid

MASK_HIDDEN = 256


@dataclass(frozen=True)
class HeadSpec:
    """The head's architecture, one field per spec key (see the module docstring)."""

    view_dim: int
    n_views: int
    vocab_sizes: dict[str, int] = field(default_factory=dict)
    width: int = 512
    layers: int = 4
    heads: int = 8
    mlp_ratio: int = 4
    pruning: bool = True
    keep_ratio: float = 0.67
    pyramid: bool = True
    gating: bool = True
    rope: bool = True
    rope_base: float = ROPE_BASE
    gafm: bool = True
    metadata: bool = True
    text: bool = True
    dropout: float = 0.1
    n_prompts: int = 0
    mask_grid: int = 16

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> HeadSpec:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(spec) - known - {"model"})
        if unknown:
            raise ValueError(f"head spec has unknown keys {unknown}; known: {sorted(known)}")
        missing = sorted({"view_dim", "n_views", "vocab_sizes"} - set(spec))
        if missing:
            raise ValueError(f"head spec lacks required keys {missing}")
        out = cls(**{k: v for k, v in spec.items() if k != "model"})
        out.validate()
        return out

    def validate(self) -> None:
        if self.width % self.heads:
            raise ValueError(f"head spec: width {self.width} is not divisible by heads {self.heads}")
        if self.rope and (self.width // self.heads) % 2:
            raise ValueError(f"head spec: rope needs an even head_dim, got {self.width // self.heads}")
        if self.n_prompts < 0 or self.mask_grid < 1:
            raise ValueError(
                f"head spec: n_prompts={self.n_prompts}, mask_grid={self.mask_grid} out of range"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"head spec: dropout={self.dropout} must be in [0, 1)")


class RoadworkHead(nn.Module):
    """The full head; `forward(batch)` returns the dict described in the module docstring."""

    def __init__(self, spec: dict[str, Any] | HeadSpec):
        super().__init__()
        s = spec if isinstance(spec, HeadSpec) else HeadSpec.from_dict(spec)
        self.spec = s
        w = s.width
        # Per-channel standardisation fitted on the training rows (the training loop calls `fit`): raw
        # backbone channels differ in scale by orders of magnitude; identity until fitted.
        self.input_norm = InputNorm(s.view_dim)
        self.pruning = ViewPruning(s.view_dim, s.keep_ratio, enabled=s.pruning)
        self.project = ProjectionPyramid(s.view_dim, w, pyramid=s.pyramid)
        self.blocks = nn.ModuleList(
            AttentionBlock(
                w,
                s.heads,
                gating=s.gating,
                rope=s.rope,
                dropout=s.dropout,
                mlp_ratio=s.mlp_ratio,
                rope_base=s.rope_base,
            )
            for _ in range(s.layers)
        )
        self.norm = nn.LayerNorm(w)
        self.gafm = GAFM(w, s.heads, dropout=s.dropout) if s.gafm else None
        self.meta = MetadataEncoder(s.vocab_sizes, text=s.text) if s.metadata else None
        fused_in = w + (self.meta.dim if self.meta is not None else 0)
        self.fusion = nn.Sequential(nn.Linear(fused_in, w), nn.GELU(), nn.Dropout(s.dropout))
        self.classifier = MLP(w, w // 2, 2, s.dropout)
        self.view_classifier = nn.Linear(w, 2)
        self.weather_head = nn.Linear(w, s.vocab_sizes["weather"])
        self.mask_decoder = MLP(w, MASK_HIDDEN, s.n_prompts * s.mask_grid**2) if s.n_prompts > 0 else None

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        views = batch["views"]
        if views.dim() != 3 or views.shape[1:] != (self.spec.n_views, self.spec.view_dim):
            raise ValueError(
                f"batch['views'] has shape {tuple(views.shape)}; this head expects "
                f"[B, {self.spec.n_views}, {self.spec.view_dim}]"
            )
        pruned = self.pruning(self.input_norm(views))
        tokens = self.project(pruned.views)
        for block in self.blocks:
            tokens = block(tokens, positions=pruned.index)
        tokens = self.norm(tokens)
        pooled, gates = self.gafm(tokens) if self.gafm is not None else mean_pool(tokens)
        fused = pooled if self.meta is None else torch.cat([pooled.float(), self.meta(batch)], dim=1)
        embedding = self.fusion(fused)
        out = {
            "logits": self.classifier(embedding),
            "view_logits": self.view_classifier(tokens),
            "weather_logits": self.weather_head(pooled),
            "view_gates": gates,
            "keep": pruned.keep,
            "view_index": pruned.index,
            "view_scores": pruned.scores,
            "embedding": embedding,
        }
        if self.mask_decoder is not None:
            b, k, _ = tokens.shape
            g = self.spec.mask_grid
            out["mask_logits"] = self.mask_decoder(tokens).view(b, k, self.spec.n_prompts, g, g)
        return out
