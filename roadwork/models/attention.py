"""Multi-head attention over view tokens, gated as in "Gated Attention for LLMs" (Qwen, NeurIPS 2025).

The gate is a sigmoid of a linear map of the (normed) block input, applied elementwise to the SDPA output
before the output projection: it lets a head switch itself off for a token (a non-linearity between the
value and output projections, and no attention sink). Attention goes through
`torch.nn.functional.scaled_dot_product_attention`, so the GPU picks its fused kernels; nothing here pins
a kernel. The linear layers are named `qkv_proj` and `out_proj` because fine-tuning adapters target them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ROPE_BASE = 100.0  # a view index spans ~12 positions: a small base spreads the rotations over that range


def rope_tables(
    positions: torch.Tensor, head_dim: int, base: float = ROPE_BASE
) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions [B, L] (view indices) -> cos, sin [B, 1, L, head_dim] for `apply_rope` (rotate-half)."""
    if head_dim % 2:
        raise ValueError(f"rotary embeddings need an even head dimension, got {head_dim}")
    half = head_dim // 2
    inv_freq = base ** (-torch.arange(half, device=positions.device, dtype=torch.float32) / half)
    angles = positions.float()[..., None] * inv_freq  # [B, L, half]
    angles = torch.cat([angles, angles], dim=-1)[:, None]  # [B, 1, L, head_dim]
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate [B, H, L, head_dim] pairs (i, i + head_dim/2) by the position angles."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


class MultiHeadAttention(nn.Module):
    """Attention with a fused `qkv_proj`, an optional sigmoid output gate (`gate_proj`) and `out_proj`.

    `force_open = True` replaces the gate by ones: the module then computes exactly what an ungated one with
    the same `qkv_proj` / `out_proj` weights computes (the equivalence the tests check).
    """

    def __init__(
        self,
        width: int,
        heads: int,
        *,
        gating: bool,
        rope: bool = False,
        dropout: float = 0.0,
        rope_base: float = ROPE_BASE,
    ):
        super().__init__()
        if width % heads:
            raise ValueError(f"attention width {width} is not divisible by {heads} heads")
        self.heads, self.head_dim = heads, width // heads
        if rope and self.head_dim % 2:
            raise ValueError(f"rotary embeddings need an even head dimension, got {self.head_dim}")
        self.rope, self.rope_base, self.dropout = rope, rope_base, dropout
        self.qkv_proj = nn.Linear(width, 3 * width)
        self.gate_proj = nn.Linear(width, width) if gating else None
        self.out_proj = nn.Linear(width, width)
        self.force_open = False

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L, width] -> [B, H, L, head_dim]."""
        b, n, _ = x.shape
        return x.view(b, n, self.heads, self.head_dim).transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,
        *,
        context: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x [B, L, width] queries; keys/values from `context` (default x); attn_mask bool, True = may attend.

        With RoPE, query and key tokens share `positions` [B, L] (self-attention only).
        """
        width = x.shape[-1]
        if context is None:
            q, k, v = self.qkv_proj(x).split(width, dim=-1)
        else:
            # Through the module (not its weight slices), so adapters wrapping qkv_proj (DoRA) apply too.
            q = self.qkv_proj(x)[..., :width]
            k, v = self.qkv_proj(context)[..., width:].split(width, dim=-1)
        q, k, v = self._split(q), self._split(k), self._split(v)
        if self.rope:
            if context is not None:
                raise ValueError("rotary embeddings are defined for self-attention only")
            if positions is None:
                positions = torch.arange(x.shape[1], device=x.device).expand(x.shape[0], -1)
            cos, sin = rope_tables(positions, self.head_dim, self.rope_base)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        drop = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=drop)
        out = out.transpose(1, 2).reshape(x.shape)
        if self.gate_proj is not None and not self.force_open:
            out = out * torch.sigmoid(self.gate_proj(x))
        return self.out_proj(out)


class AttentionBlock(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x)). The gate reads norm(x)."""

    def __init__(
        self,
        width: int,
        heads: int,
        *,
        gating: bool = True,
        rope: bool = False,
        dropout: float = 0.0,
        mlp_ratio: int = 4,
        rope_base: float = ROPE_BASE,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = MultiHeadAttention(
            width, heads, gating=gating, rope=rope, dropout=dropout, rope_base=rope_base
        )
        self.norm2 = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, mlp_ratio * width)
        self.fc2 = nn.Linear(mlp_ratio * width, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x), positions=positions))
        return x + self.drop(self.fc2(self.drop(F.gelu(self.fc1(self.norm2(x))))))
