"""SAM 3 pseudo-masks, the model side: the model (tiny or real), text prompts encoded once, one image
encoding shared by every prompt, and one binary mask per prompt (the union of its instances).

`masks.model: tiny` builds a small `Sam3Model` with random weights from a fixed seed, a CLIP BPE tokenizer
whose merges are learnt here from a fixed word list, and a `Sam3Processor` (the embedded default; no
download possible here). Anything else is a Hugging Face id (the real one: facebook/sam3) or a local
directory, loaded with `from_pretrained`. Either way the `sam` stage saves model and processor with
`save_pretrained`, so `masks` reads one hermetic, DVC-tracked folder.

The processor stretches the whole image to its square input, so a mask covers the whole image
(`roadwork.masks.fill` turns it into the cache's grids over the image and its views).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from roadwork.features import manifest
from roadwork.features.manifest import DTYPES, weights_fingerprint
from roadwork.masks.config import MasksConfig, TinySamConfig
from roadwork.tiny_clip import BOS, EOS, clip_vocab

if TYPE_CHECKING:  # transformers takes seconds to import: readers of the mask cache skip it
    from transformers import CLIPTokenizer, Sam3Config, Sam3Model, Sam3Processor
    from transformers.models.sam3.modeling_sam3 import Sam3ImageSegmentationOutput, Sam3VisionEncoderOutput

PROMPT_TOKENS = 32  # Sam3Processor pads every prompt to 32 tokens (SAM 3's text context length)
# Words the tiny tokenizer learns whole: those of the default prompts and nearby roadwork vocabulary.
# Any other text still tokenises (into smaller pieces down to single bytes).
TINY_WORDS = (
    *("traffic", "cone", "construction", "barrier", "road", "work", "sign", "worker", "vehicle"),
    *("equipment", "barrel", "fence", "excavator", "truck", "person", "car", "lane", "closed", "ahead"),
    *("detour", "orange", "pole", "crane", "roller", "drum", "arrow", "board", "tape", "vest", "helmet"),
)


def build_tiny_tokenizer(words: Sequence[str] = TINY_WORDS) -> CLIPTokenizer:
    """A CLIP byte-level BPE tokenizer made here: every byte, every byte ending a word, learnt merges."""
    from transformers import CLIPTokenizer

    bad = [w for w in words if not (w.isascii() and w.isalpha() and w.islower())]
    if bad:
        raise ValueError(f"tiny tokenizer words must be lowercase ASCII letters, got {bad}")
    vocab, merges = clip_vocab(words)
    return CLIPTokenizer(vocab=vocab, merges=merges, bos_token=BOS, eos_token=EOS, pad_token=EOS)


def tiny_model_config(config: TinySamConfig, tokenizer: CLIPTokenizer) -> Sam3Config:
    """A Sam3Config of the real architecture at the tiny width and depth."""
    from transformers import Sam3Config, Sam3VisionConfig, Sam3ViTConfig

    h, layers, heads = config.hidden_size, config.layers, config.heads
    grid = config.image_size // config.patch_size
    std = config.init_range
    block = {"hidden_size": h, "num_attention_heads": heads, "intermediate_size": 2 * h}
    block["initializer_range"] = std
    vit = Sam3ViTConfig(
        **block,
        num_hidden_layers=layers,
        image_size=config.image_size,
        patch_size=config.patch_size,
        window_size=max(1, grid // 2),
        global_attn_indexes=[layers - 1],  # windowed layers, then global attention, as in the real one
        pretrain_image_size=config.image_size,
    )
    vision = Sam3VisionConfig(
        backbone_config=vit,
        fpn_hidden_size=h,
        backbone_feature_sizes=[[4 * grid] * 2, [2 * grid] * 2, [grid] * 2],
        initializer_range=std,
    )
    text = {
        **block,
        "vocab_size": len(tokenizer),
        "projection_dim": h,
        "num_hidden_layers": layers,
        "max_position_embeddings": PROMPT_TOKENS,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    return Sam3Config(
        vision_config=vision,
        text_config=text,
        geometry_encoder_config={**block, "num_layers": layers},
        detr_encoder_config={**block, "num_layers": layers},
        detr_decoder_config={**block, "num_layers": layers, "num_queries": config.queries},
        mask_decoder_config={"hidden_size": h, "num_attention_heads": heads, "initializer_range": std},
        initializer_range=std,
    )


def build_tiny(config: TinySamConfig) -> tuple[Sam3Model, Sam3Processor]:
    """A randomly initialised SAM 3 and its processor, identical for the same config (seeded)."""
    from transformers import Sam3ImageProcessor, Sam3Model, Sam3Processor

    tokenizer = build_tiny_tokenizer()
    side = {"height": config.image_size, "width": config.image_size}
    processor = Sam3Processor(image_processor=Sam3ImageProcessor(size=side), tokenizer=tokenizer)
    torch.manual_seed(config.seed)
    return Sam3Model(tiny_model_config(config, tokenizer)).eval(), processor


def resolve(model_name: str, tiny: TinySamConfig) -> tuple[Sam3Model, Sam3Processor]:
    """The model and processor named by `masks.model`: built (tiny) or loaded (id or directory)."""
    from transformers import Sam3Model, Sam3Processor

    if model_name == "tiny":
        return build_tiny(tiny)
    try:
        model = Sam3Model.from_pretrained(model_name).eval()
        processor = Sam3Processor.from_pretrained(model_name)
    except (OSError, ValueError) as e:
        raise OSError(
            f"masks.model={model_name!r}: not a local directory with a saved SAM 3 model and processor "
            f"and not reachable on the Hugging Face hub ({e}). Download it once where the hub is "
            "reachable, then point masks.model at that folder."
        ) from e
    return model, processor


def input_size(processor: Sam3Processor) -> tuple[int, int]:
    """(height, width) of the model input: the processor resizes every image to it."""
    size = processor.image_processor.size
    return int(size.height), int(size.width)


# Config keys that record how a model was saved or loaded, not what it computes.
_VOLATILE_KEYS = frozenset({"dtype", "_name_or_path", "architectures", "transformers_version"})


def _canonical(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items() if k not in _VOLATILE_KEYS}
    return value


def fingerprint(model: Sam3Model, processor: Sam3Processor, weights: str | None = None) -> str:
    """sha256 of what the masks depend on: the weights (`weights_fingerprint`, computed unless given),
    the architecture (same weights under another config compute other masks), the tokenizer and the
    image preprocessing. Stable across save/load."""
    parts = {
        "weights": weights or weights_fingerprint(model),
        "config": _canonical(model.config.to_dict()),
        "tokenizer": json.loads(processor.tokenizer.backend_tokenizer.to_str()),
        "image_processor": _canonical(processor.image_processor.to_dict()),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def materialise(model_name: str, tiny: TinySamConfig, out_dir: Path) -> dict[str, Any]:
    """Save SAM 3 `model_name` (`tiny`: built from `tiny`) and its processor to `out_dir`, write the
    manifest; return it."""
    model, processor = resolve(model_name, tiny)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    weights = weights_fingerprint(model)  # hashing 3.4 GB of real weights takes a while: once
    return manifest.write_manifest(
        out_dir,
        {
            "source": model_name,
            "fingerprint": fingerprint(model, processor, weights),
            "weights_fingerprint": weights,
            "parameters": sum(p.numel() for p in model.parameters()),
            "input_size": list(input_size(processor)),
            "patch_size": model.config.vision_config.backbone_config.patch_size,
            "queries": model.config.detr_decoder_config.num_queries,
        },
    )


def load_sam(
    sam_dir: Path, dtype: str = "float32", device: str | torch.device = "cpu"
) -> tuple[Sam3Model, Sam3Processor]:
    """Load the saved model and processor (never from the hub: the `sam` stage materialised them)."""
    from transformers import Sam3Model, Sam3Processor

    if dtype not in DTYPES:
        raise ValueError(f"masks.dtype={dtype!r}: expected one of {sorted(DTYPES)}")
    model = Sam3Model.from_pretrained(sam_dir, local_files_only=True, dtype=DTYPES[dtype])
    processor = Sam3Processor.from_pretrained(sam_dir, local_files_only=True)
    return model.to(device).eval().requires_grad_(False), processor


@dataclass(frozen=True)
class Prompts:
    """Text prompts encoded once per run: the same P embeddings serve every image."""

    features: torch.Tensor  # [P, T, D] projected text features (the model's `text_embeds.pooler_output`)
    mask: torch.Tensor  # [P, T] attention mask (1 = token, 0 = padding)


@torch.inference_mode()
def encode_prompts(model: Sam3Model, processor: Sam3Processor, prompts: Sequence[str]) -> Prompts:
    """Tokenise (the processor's CLIP tokenizer, padded to 32) and encode the prompts once."""
    limit = model.config.text_config.max_position_embeddings
    for prompt, ids in zip(prompts, processor.tokenizer(list(prompts))["input_ids"], strict=True):
        if len(ids) > limit:
            raise ValueError(f"masks.prompts: {prompt!r} is {len(ids)} tokens, the model takes {limit}")
    tokens = processor(text=list(prompts), return_tensors="pt")
    device = next(model.parameters()).device
    ids, mask = tokens["input_ids"].to(device), tokens["attention_mask"].to(device)
    features = model.get_text_features(input_ids=ids, attention_mask=mask).pooler_output
    return Prompts(features=features, mask=mask)


@torch.inference_mode()
def decode_prompts(
    model: Sam3Model, vision: Sam3VisionEncoderOutput, prompts: Prompts
) -> Sam3ImageSegmentationOutput:
    """Raw outputs for every (image, prompt) pair of already encoded images, image-major (b * P + p).

    Only the DETR encoder and decoder and the mask decoder run once per prompt, on the shared encoding.
    """
    from transformers.modeling_outputs import BaseModelOutputWithPooling
    from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

    n_images = vision.fpn_hidden_states[0].shape[0]
    n_prompts = prompts.features.shape[0]

    def per_prompt(levels: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return tuple(x.expand(n_images, *x.shape[1:]).repeat_interleave(n_prompts, dim=0) for x in levels)

    shared = Sam3VisionEncoderOutput(
        fpn_hidden_states=per_prompt(vision.fpn_hidden_states),
        fpn_position_encoding=per_prompt(vision.fpn_position_encoding),
    )
    text = BaseModelOutputWithPooling(pooler_output=prompts.features.repeat(n_images, 1, 1))
    return model(vision_embeds=shared, text_embeds=text, attention_mask=prompts.mask.repeat(n_images, 1))


@torch.inference_mode()
def prompt_outputs(
    model: Sam3Model, pixel_values: torch.Tensor, prompts: Prompts
) -> Sam3ImageSegmentationOutput:
    """Raw outputs for every (image, prompt) pair: the image encoder (ViT + FPN, the dominant cost)
    runs once per image, and its encoding is shared by all prompts."""
    return decode_prompts(model, model.get_vision_features(pixel_values=pixel_values), prompts)


def union_masks(
    processor: Sam3Processor,
    outputs: Sam3ImageSegmentationOutput,
    score_threshold: float,
    mask_threshold: float,
) -> torch.Tensor:
    """bool [N, h, w]: per output row, the union of its instances, at the model's mask resolution.

    Instances and their binary masks come from the processor's `post_process_instance_segmentation`
    (score = query probability x presence probability, kept when above `score_threshold`; a pixel is
    on when its probability is above `mask_threshold`), so the scoring is SAM 3's own.
    """
    results = processor.post_process_instance_segmentation(
        outputs, threshold=score_threshold, mask_threshold=mask_threshold
    )
    return torch.stack([r["masks"].bool().any(dim=0) for r in results])


def predict_masks(
    model: Sam3Model,
    processor: Sam3Processor,
    pixel_values: torch.Tensor,
    prompts: Prompts,
    config: MasksConfig,
) -> torch.Tensor:
    """bool [B, P, h, w]: one binary mask per image and prompt."""
    outputs = prompt_outputs(model, pixel_values, prompts)
    union = union_masks(processor, outputs, config.score_threshold, config.mask_threshold)
    return union.view(pixel_values.shape[0], prompts.features.shape[0], *union.shape[-2:])
