"""Metadata encoder: GPS, weather / daytime / scene tags and the scene-description embedding -> one vector.

Layout (704 with text, 320 without):
- GPS: 128 sinusoidal features of (lat, lon); a row without GPS gets a learnable "no GPS" vector;
- weather, daytime, scene: 64-wide `nn.Embedding`s whose index 0 is NULL, an ordinary learnable row
  (no padding_idx, not zeroed), so "unknown" is a value the model can learn from;
- text (text=True): the 384-d sentence embedding through a trainable adapter (Linear + GELU + LayerNorm);
  a row without a description gets a learnable "no text" vector instead of the (meaningless) zeros.
  text=False drops the slot and the adapter.
Every part is on a comparable per-element scale (~1): sinusoids, N(0, 1) embeddings, a LayerNorm'd adapter.
"""

from __future__ import annotations

import torch
from torch import nn

from roadwork.models.layers import gps_sinusoidal

GPS_DIM = 128
TAG_DIM = 64
TEXT_DIM = 384
# (vocabulary name, batch key)
TAGS = (("weather", "weather"), ("daytime", "daytime"), ("scene_environment", "scene"))


class MetadataEncoder(nn.Module):
    """Batch dict -> [B, dim] metadata vector; `dim` is 704 (text on) or 320 (text off)."""

    def __init__(self, vocab_sizes: dict[str, int], *, text: bool = True):
        super().__init__()
        missing = [name for name, _ in TAGS if name not in vocab_sizes]
        if missing:
            raise ValueError(f"vocab_sizes lacks {missing}; expected keys {[name for name, _ in TAGS]}")
        self.no_gps = nn.Parameter(0.1 * torch.randn(GPS_DIM))
        self.tags = nn.ModuleDict({name: nn.Embedding(vocab_sizes[name], TAG_DIM) for name, _ in TAGS})
        self.text_adapter: nn.Module | None = None
        if text:
            self.text_adapter = nn.Sequential(
                nn.Linear(TEXT_DIM, TEXT_DIM), nn.GELU(), nn.LayerNorm(TEXT_DIM)
            )
            self.no_text = nn.Parameter(0.1 * torch.randn(TEXT_DIM))
        self.dim = GPS_DIM + len(TAGS) * TAG_DIM + (TEXT_DIM if text else 0)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        has_gps = batch["gps_mask"].bool()[:, None]
        gps = gps_sinusoidal(batch["lat"].float(), batch["lon"].float(), GPS_DIM)
        parts = [torch.where(has_gps, gps, self.no_gps.to(gps.dtype))]
        for name, key in TAGS:
            index = batch[key]
            size = self.tags[name].num_embeddings
            if index.numel() and (int(index.min()) < 0 or int(index.max()) >= size):
                raise ValueError(f"batch[{key!r}] has indices outside [0, {size}) of the {name} vocabulary")
            parts.append(self.tags[name](index))
        if self.text_adapter is not None:
            text = self.text_adapter(batch["text"].float())
            parts.append(torch.where(batch["text_mask"].bool()[:, None], text, self.no_text.to(text.dtype)))
        return torch.cat([p.float() for p in parts], dim=1)
