"""SDXL through diffusers: the validator's generator, image-to-image and text-to-image.

`load_pipelines` loads an SDXL checkpoint (a Hugging Face id, e.g. stabilityai/stable-diffusion-xl-base-1.0,
or a local directory holding one saved with `save_pretrained`) once, as the image-to-image pipeline; the
text-to-image pipeline shares its modules. `build_tiny_sdxl` saves a tiny SDXL with random weights (same
architecture and folder layout, CLIP tokenizers whose vocabulary is written here), so the loading and
drawing code runs on a CPU in tests exactly as it runs on a real checkpoint.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL import Image

from roadwork.generate.config import GenerateConfig
from roadwork.generate.prompts import prompt_words
from roadwork.tiny_clip import BOS, EOS, clip_vocab

if TYPE_CHECKING:  # diffusers takes seconds to import: only the runs that draw load it
    from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
MULTIPLE = 8  # SDXL's VAE downsamples by 8: image sides are multiples of it
CONTEXT = 77  # CLIP's text context, in tokens (both SDXL text encoders)
_SAMPLE = 1 << 20  # bytes read from each end of a checkpoint file for its fingerprint


class _QuietUpcast(logging.Filter):
    """Drops diffusers' warning about its own VAE upcast, which it logs inside every image-to-image call."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "should be kept in float32" not in record.getMessage()


@dataclass(frozen=True)
class Pipelines:
    """One SDXL checkpoint as its two pipelines; they share every module (one copy of the weights)."""

    i2i: StableDiffusionXLImg2ImgPipeline
    t2i: StableDiffusionXLPipeline


def model_fingerprint(model: str) -> str:
    """What identifies the weights of `model`: for a local directory, a sha256 over every file's path,
    size and first and last MiB (a checkpoint rebuilt in place changes it, and gigabytes of weights are
    not read in full; hidden files, such as a download cache's, are left out); for a hub id, the id."""
    root = Path(model)
    if not root.is_dir():
        return model
    digest = hashlib.sha256()
    files = [
        p for p in root.rglob("*") if p.is_file() and not any(s[0] == "." for s in p.relative_to(root).parts)
    ]
    for path in sorted(files):
        size = path.stat().st_size
        digest.update(f"{path.relative_to(root).as_posix()}\0{size}\0".encode())
        with path.open("rb") as f:
            digest.update(f.read(_SAMPLE))
            if size > 2 * _SAMPLE:
                f.seek(-_SAMPLE, 2)
            digest.update(f.read(_SAMPLE))
    return digest.hexdigest()


def load_pipelines(model: str, device: str | torch.device, dtype: str) -> Pipelines:
    """The SDXL pipelines of `model` (hub id or directory) on `device`, weights in `dtype`."""
    from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

    if dtype not in TORCH_DTYPES:
        raise ValueError(f"generate.dtype={dtype!r}: expected one of {sorted(TORCH_DTYPES)}")
    try:
        i2i = StableDiffusionXLImg2ImgPipeline.from_pretrained(model, dtype=TORCH_DTYPES[dtype])
    except (OSError, ValueError) as e:
        raise OSError(
            f"generate.model={model!r}: not a local directory with a saved SDXL pipeline (model_index.json "
            f"and its component folders) and not reachable on the Hugging Face hub ({e}). Download it once "
            "where the hub is reachable (save_pretrained), then point generate.model at that folder."
        ) from e
    i2i = i2i.to(device)
    # Built from the same module objects, not from `from_pipe`, which would cast them all to its dtype.
    accepted = inspect.signature(StableDiffusionXLPipeline.__init__).parameters
    t2i = StableDiffusionXLPipeline(
        **{name: module for name, module in i2i.components.items() if name in accepted},
        force_zeros_for_empty_prompt=i2i.config.force_zeros_for_empty_prompt,
        add_watermarker=i2i.watermark is not None,
    )
    for pipe in (i2i, t2i):
        pipe.set_progress_bar_config(disable=True)  # the stage reports progress per image itself
    quiet = logging.getLogger("diffusers.models.modeling_utils")
    if not any(isinstance(f, _QuietUpcast) for f in quiet.filters):
        quiet.addFilter(_QuietUpcast())
    return Pipelines(i2i=i2i, t2i=t2i)


def fit_side(image: Image.Image, max_side: int) -> Image.Image:
    """`image` scaled so its longer side is at most `max_side` (never enlarged), sides rounded down to
    multiples of 8: the size SDXL draws at, with no pixels beyond what the model needs."""
    width, height = image.size
    scale = min(1.0, max_side / max(width, height))
    size = tuple(max(MULTIPLE, int(side * scale) // MULTIPLE * MULTIPLE) for side in (width, height))
    return image if size == image.size else image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def _generator(seed: int) -> torch.Generator:
    # On the CPU whatever the device: the same seed gives the same starting noise on a CPU and a GPU.
    return torch.Generator("cpu").manual_seed(int(seed))


@torch.inference_mode()
def redraw(
    pipes: Pipelines, image: Image.Image, prompt: str, seed: int, config: GenerateConfig
) -> Image.Image:
    """Image-to-image: `image` (fitted to `config.i2i_max_side`) re-drawn from `prompt`."""
    out = pipes.i2i(
        prompt=prompt,
        image=fit_side(image.convert("RGB"), config.i2i_max_side),
        strength=config.strength,
        guidance_scale=config.guidance,
        num_inference_steps=config.steps,
        generator=_generator(seed),
    )
    return out.images[0]


@torch.inference_mode()
def draw(pipes: Pipelines, prompt: str, seed: int, config: GenerateConfig) -> Image.Image:
    """Text-to-image: a `config.t2i_size` square image of `prompt`."""
    out = pipes.t2i(
        prompt=prompt,
        height=config.t2i_size,
        width=config.t2i_size,
        guidance_scale=config.guidance,
        num_inference_steps=config.steps,
        generator=_generator(seed),
    )
    return out.images[0]


def write_tokenizer(out_dir: Path, words: Sequence[str]) -> None:
    """A CLIP tokenizer's files as an SDXL checkpoint has them (vocab.json, merges.txt, config): every
    byte, every byte ending a word, and the merges that make each of `words` one token. Any other text
    still tokenises, down to single bytes."""
    vocab, merges = clip_vocab(words)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    config = {"model_max_length": CONTEXT, "bos_token": BOS, "eos_token": EOS, "unk_token": EOS,
              "pad_token": EOS, "tokenizer_class": "CLIPTokenizer"}  # fmt: skip
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def _tiny_modules(vocab_size: int, special: dict[str, int]) -> dict[str, torch.nn.Module]:
    """SDXL's modules at a tiny width: two CLIP text encoders (the second with a projection, whose
    pooled output joins the size-and-crop embedding), a text-time UNet, a four-level VAE (downsampling
    by 8, as SDXL's)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    text = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, projection_dim=32, max_position_embeddings=CONTEXT, **special,
    )  # fmt: skip
    time_dim = 8  # per size / crop / target number; SDXL conditions on six of them
    unet = UNet2DConditionModel(
        sample_size=8, block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=8, use_linear_projection=True, transformer_layers_per_block=1,
        cross_attention_dim=2 * text.hidden_size,  # both encoders' hidden states, concatenated
        addition_embed_type="text_time", addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=6 * time_dim + text.projection_dim,
    )  # fmt: skip
    vae = AutoencoderKL(
        block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=8, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        sample_size=64, scaling_factor=0.13025,  # SDXL's latent scale
    )  # fmt: skip
    return {
        "text_encoder": CLIPTextModel(text),
        "text_encoder_2": CLIPTextModelWithProjection(text),
        "unet": unet,
        "vae": vae,
    }


def build_tiny_sdxl(out_dir: str | Path, seed: int = 0) -> Path:
    """Save a tiny SDXL pipeline with random weights (identical for the same seed) to `out_dir`,
    loadable by `load_pipelines(str(out_dir), ...)` like a real checkpoint; returns `out_dir`."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline
    from transformers import CLIPTokenizer

    out_dir = Path(out_dir)
    tokenizers = {}
    for name in ("tokenizer", "tokenizer_2"):
        write_tokenizer(out_dir / name, prompt_words())
        tokenizers[name] = CLIPTokenizer.from_pretrained(out_dir / name)
    first = tokenizers["tokenizer"]
    special = {"bos_token_id": first.bos_token_id, "eos_token_id": first.eos_token_id,
               "pad_token_id": first.pad_token_id}  # fmt: skip
    with torch.random.fork_rng(devices=[]):  # seeded weights without touching the caller's generator
        torch.manual_seed(seed)
        modules = _tiny_modules(len(first), special)
    scheduler = EulerDiscreteScheduler(  # SDXL base 1.0's scheduler configuration
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        steps_offset=1, timestep_spacing="leading", prediction_type="epsilon",
    )  # fmt: skip
    pipe = StableDiffusionXLImg2ImgPipeline(**modules, **tokenizers, scheduler=scheduler)
    pipe.save_pretrained(out_dir)
    return out_dir
