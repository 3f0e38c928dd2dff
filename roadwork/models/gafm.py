"""GAFM: gated attention fusion of the view tokens into one image vector.

1. view gates g_v = sigmoid(MLP(token_v)) in (0, 1): how much a view should count;
2. cross-view attention: each view queries the *other* views (its own key is masked out), whose keys and
   values are scaled by their gates, so a view borrows evidence from relevant neighbours only;
3. self-attention refinement over the updated tokens (all pairs, a plain pre-norm block);
4. gated weighted pooling: weights w = softmax_v(score(token_v) + log g_v), i.e. proportional to
   g_v * exp(score_v); the pooled vector is sum_v w_v token_v, then LayerNorm.

The pooling weights [B, V'] are returned (the head exposes them as `view_gates`). The switch off is
`mean_pool`: uniform weights, no parameters.
"""

from __future__ import annotations

import torch
from torch import nn

from roadwork.models.attention import AttentionBlock, MultiHeadAttention


def mean_pool(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, V, W] -> mean [B, W] and the uniform weights [B, V] (GAFM off)."""
    b, n, _ = tokens.shape
    return tokens.mean(dim=1), tokens.new_full((b, n), 1.0 / n)


class GAFM(nn.Module):
    """Gated attention fusion module: [B, V, W] tokens -> pooled [B, W] and pooling weights [B, V]."""

    def __init__(self, width: int, heads: int, *, dropout: float = 0.0):
        super().__init__()
        self.gate = nn.Sequential(nn.Linear(width, width // 4), nn.GELU(), nn.Linear(width // 4, 1))
        self.cross_norm = nn.LayerNorm(width)
        self.cross = MultiHeadAttention(width, heads, gating=False, dropout=dropout)
        self.refine = AttentionBlock(width, heads, gating=False, dropout=dropout, mlp_ratio=2)
        self.score = nn.Linear(width, 1, bias=False)  # a bias would cancel in the softmax over views
        self.norm = nn.LayerNorm(width)
        self.drop = nn.Dropout(dropout)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = tokens.shape[1]
        gate_logit = self.gate(tokens).squeeze(-1).float()  # [B, V]
        gates = torch.sigmoid(gate_logit)
        normed = self.cross_norm(tokens)
        # A single view has no "other" view to attend to: then it attends to itself.
        others = ~torch.eye(n, dtype=torch.bool, device=tokens.device) if n > 1 else None
        context = normed * gates[..., None].to(normed.dtype)
        x = tokens + self.drop(self.cross(normed, context=context, attn_mask=others))
        x = self.refine(x)
        # log g = -softplus(-logit): exact and finite where sigmoid underflows.
        log_gates = -nn.functional.softplus(-gate_logit)
        weights = torch.softmax(self.score(x).squeeze(-1).float() + log_gates, dim=1)
        pooled = torch.einsum("bv,bvw->bw", weights.to(x.dtype), x)
        return self.norm(pooled), weights
