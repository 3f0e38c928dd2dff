"""The frozen DINOv3 backbone: build the tiny one or resolve a real one, save it, fingerprint it.

`backbone.model: tiny` builds a small `DINOv3ViTModel` with random weights from a fixed seed (the
embedded default; no download possible here). Anything else is a Hugging Face id or a local directory,
loaded with `from_pretrained` (the real one: facebook/dinov3-vith16plus-pretrain-lvd1689m). Either way
the stage saves the model with `save_pretrained`, so `extract` reads one hermetic, DVC-tracked folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from roadwork.features import manifest
from roadwork.features.manifest import DTYPES, weights_fingerprint

if TYPE_CHECKING:  # transformers takes seconds to import: stages that only read manifests skip it
    from transformers import DINOv3ViTModel


@dataclass(frozen=True)
class TinyBackboneConfig:
    """A small random DINOv3 ViT for CPU runs and tests."""

    seed: int  # torch seed for the random weights
    hidden_size: int  # token width D
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int  # MLP width
    num_register_tokens: int  # register tokens sit between CLS and the patches
    patch_size: int  # 16 like the real ViT-H+/16


@dataclass(frozen=True)
class BackboneDtype:
    """The key of `backbone:` that every stage loading the saved backbone reads."""

    dtype: str  # weights dtype at extraction and serving: float32 | bfloat16 | float16


@dataclass(frozen=True)
class BackboneConfig(BackboneDtype):
    """Which backbone `extract` uses."""

    model: str  # "tiny", a Hugging Face id, or a local directory
    tiny: TinyBackboneConfig  # used only when model == "tiny"


def build_tiny(config: TinyBackboneConfig) -> DINOv3ViTModel:
    """A randomly initialised DINOv3 ViT, identical for the same config (seeded)."""
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    vit_config = DINOv3ViTConfig(
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        intermediate_size=config.intermediate_size,
        num_register_tokens=config.num_register_tokens,
        patch_size=config.patch_size,
    )
    torch.manual_seed(config.seed)
    return DINOv3ViTModel(vit_config).eval()


def resolve(config: BackboneConfig) -> DINOv3ViTModel:
    """The model named by the config: built (tiny) or loaded with `from_pretrained` (id or directory)."""
    from transformers import DINOv3ViTModel

    if config.model == "tiny":
        return build_tiny(config.tiny)
    try:
        return DINOv3ViTModel.from_pretrained(config.model).eval()
    except OSError as e:
        raise OSError(
            f"backbone.model={config.model!r}: not a local directory with a saved DINOv3 model and not "
            f"reachable on the Hugging Face hub ({e}). Download it once where the hub is reachable, then "
            "point backbone.model at that folder."
        ) from e


def materialise(config: BackboneConfig, out_dir: Path) -> dict[str, Any]:
    """Save the configured backbone to `out_dir` and write its manifest; returns the manifest."""
    model = resolve(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    vit = model.config
    return manifest.write_manifest(
        out_dir,
        {
            "source": config.model,
            "fingerprint": weights_fingerprint(model),
            "parameters": sum(p.numel() for p in model.parameters()),
            "hidden_size": vit.hidden_size,
            "patch_size": vit.patch_size,
            "num_register_tokens": vit.num_register_tokens,
            "num_hidden_layers": vit.num_hidden_layers,
        },
    )


def load_backbone(backbone_dir: Path, dtype: str = "float32", device: str = "cpu") -> DINOv3ViTModel:
    """Load the saved backbone (never from the hub: the stage already materialised it)."""
    from transformers import DINOv3ViTModel

    if dtype not in DTYPES:
        raise ValueError(f"backbone.dtype={dtype!r}: expected one of {sorted(DTYPES)}")
    model = DINOv3ViTModel.from_pretrained(backbone_dir, local_files_only=True, dtype=DTYPES[dtype])
    return model.to(device).eval().requires_grad_(False)


def pooled_tokens(model: DINOv3ViTModel, pixels: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] normalised pixels -> [B, 3, D]: the CLS token, the mean and the max of the patch tokens.

    Register tokens (between CLS and the patches) are left out of the patch statistics.
    """
    hidden = model(pixel_values=pixels).last_hidden_state
    patches = hidden[:, 1 + model.config.num_register_tokens :]
    return torch.stack([hidden[:, 0], patches.mean(dim=1), patches.amax(dim=1)], dim=1)
