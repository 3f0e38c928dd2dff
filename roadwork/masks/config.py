"""The `masks:` params section: which masks (SAM 3 or the synthetic truth), which SAM 3, which prompts,
how masks become grids, and how the stage runs. Read by the SAM 3 side (`sam`, `mask_fill`) and by the
mask cache's readers (`masks`), which therefore never import SAM 3 code.
"""

from __future__ import annotations

from dataclasses import dataclass

from roadwork.features.manifest import DTYPES


@dataclass(frozen=True)
class TinySamConfig:
    """A small random SAM 3 for CPU runs and tests (one width for every part)."""

    seed: int  # torch seed for the random weights
    image_size: int  # square input side, a multiple of patch_size (1008 for the real SAM 3)
    patch_size: int  # ViT patch (14 like the real one); masks come out at 4 x image_size / patch_size
    hidden_size: int  # width of the ViT, FPN, text encoder, DETR and mask decoder; a multiple of 4 x heads
    layers: int  # layers of each transformer (ViT, text, geometry, DETR encoder and decoder)
    heads: int  # attention heads of each transformer
    queries: int  # DETR object queries (200 in the real model)
    init_range: float  # std of the random weights; 0.02 (transformers' default) gives mask logits ~1e-4,
    # every pixel at probability 0.5: ~0.2 spreads logits over a few units, so thresholds mean something

    def __post_init__(self) -> None:
        for name in ("image_size", "patch_size", "hidden_size", "layers", "heads", "queries"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"masks.tiny.{name}: expected an int >= 1, got {value!r}")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"masks.tiny.image_size={self.image_size} is not a multiple of patch_size={self.patch_size}"
            )
        if not self.init_range > 0:
            raise ValueError(f"masks.tiny.init_range: expected a value > 0, got {self.init_range!r}")
        if self.hidden_size % 8 or self.hidden_size % (4 * self.heads):
            # GroupNorm(8) in the mask decoder; axial RoPE splits each head into 4 parts.
            raise ValueError(
                f"masks.tiny.hidden_size={self.hidden_size} must be a multiple of 8 and of 4 x heads "
                f"({4 * self.heads})"
            )


@dataclass(frozen=True)
class SamSource:
    """The keys of `masks:` that define the model itself (the `sam` stage's share)."""

    model: str  # "tiny", a Hugging Face id (facebook/sam3) or a local directory
    tiny: TinySamConfig  # used only when model == "tiny"


@dataclass(frozen=True)
class MaskKey:
    """What the cached masks depend on besides the view rule: the keys of `masks:` a reader needs."""

    source: str  # "sam": SAM 3 pseudo-masks | "truth": the synthetic data's true object masks
    model: str  # "tiny", a Hugging Face id (facebook/sam3) or a local directory
    prompts: tuple[str, ...]  # text prompts; one mask per prompt
    score_threshold: float  # an instance counts when its score (query x presence) is above this
    mask_threshold: float  # a pixel of an instance is on when its mask probability is above this
    image_grid: int  # side M of the coarse whole-image mask [P, M, M]
    view_grid: int  # side G of the per-view masks [V, P, G, G]

    def __post_init__(self) -> None:
        if self.source not in ("sam", "truth"):
            raise ValueError(f"masks.source: expected 'sam' or 'truth', got {self.source!r}")
        if not self.prompts or any(not isinstance(p, str) or not p.strip() for p in self.prompts):
            raise ValueError(f"masks.prompts: expected non-empty strings, got {list(self.prompts)!r}")
        if len(set(self.prompts)) != len(self.prompts):
            raise ValueError(f"masks.prompts: duplicate prompt in {list(self.prompts)!r}")
        for name in ("score_threshold", "mask_threshold"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"masks.{name}: expected a value in [0, 1), got {getattr(self, name)!r}")
        for name in ("image_grid", "view_grid"):
            if getattr(self, name) < 1:
                raise ValueError(f"masks.{name}: expected an int >= 1, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class MasksConfig(MaskKey):
    """params `masks:`: which SAM 3, which prompts, how masks become grids, how the stage runs."""

    batch_images: int  # images per image-encoder forward (x prompts in the decoder)
    chunk_rows: int  # compressed chunk along images inside a shard: the unit of reading
    shard_rows: int  # rows per shard file (a multiple of chunk_rows): the unit of writing and resuming
    workers: int  # DataLoader worker processes decoding images (0 = in the main process)
    device: str  # auto | cpu | cuda
    dtype: str  # weights dtype: float32 | bfloat16 | float16
    splits: tuple[str, ...]  # index splits to mask
    tiny: TinySamConfig  # used only when model == "tiny"

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("batch_images", "chunk_rows", "shard_rows"):
            if getattr(self, name) < 1:
                raise ValueError(f"masks.{name}: expected an int >= 1, got {getattr(self, name)!r}")
        if self.workers < 0:
            raise ValueError(f"masks.workers: expected an int >= 0, got {self.workers!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"masks.dtype={self.dtype!r}: expected one of {sorted(DTYPES)}")
