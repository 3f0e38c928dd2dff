"""SAM 3 model side: tiny model and tokenizer, save/load, fingerprint, shared encoding, post-processing."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
from transformers import Sam3ImageProcessor, Sam3Model, Sam3Processor
from transformers.models.sam3.modeling_sam3 import Sam3ImageSegmentationOutput

from roadwork.features.manifest import read_manifest, weights_fingerprint
from roadwork.masks.config import MasksConfig, TinySamConfig
from roadwork.masks.sam import (
    Prompts,
    build_tiny,
    build_tiny_tokenizer,
    encode_prompts,
    fingerprint,
    load_sam,
    materialise,
    predict_masks,
    prompt_outputs,
    resolve,
    union_masks,
)
from roadwork.tiny_clip import learn_bpe

PROMPTS = ("traffic cone", "construction barrier", "road work sign")
TINY = TinySamConfig(
    seed=0, image_size=56, patch_size=14, hidden_size=32, layers=1, heads=2, queries=8, init_range=0.2
)
CONFIG = MasksConfig(
    source="sam",
    model="tiny",
    prompts=PROMPTS,
    score_threshold=0.3,
    mask_threshold=0.5,
    image_grid=8,
    view_grid=4,
    batch_images=2,
    chunk_rows=2,
    shard_rows=4,
    workers=0,
    device="cpu",
    dtype="float32",
    splits=("train",),
    tiny=TINY,
)


@pytest.fixture(scope="module")
def tiny():
    return build_tiny(TINY)


def test_learn_bpe_known_merges():
    # Ties go to the smaller pair; merging stops once every word is a single symbol.
    assert learn_bpe(["ab", "abc"]) == [("a", "b"), ("a", "b</w>"), ("ab", "c</w>")]
    assert learn_bpe(["aa", "aa", "a"]) == [("a", "a</w>")]


def test_tiny_tokenizer_keeps_prompt_words_whole_and_covers_any_text():
    tokenizer = build_tiny_tokenizer()
    assert tokenizer.tokenize("Construction  WORKER") == ["construction</w>", "worker</w>"]
    ids = tokenizer("road work sign")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id and len(ids) == 5
    # Text outside the word list falls back to smaller pieces, down to single bytes: nothing is unknown.
    ids = tokenizer("détour 42, ahead!")["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=True).replace(" ", "") == "détour42,ahead!"
    with pytest.raises(ValueError, match="lowercase ASCII"):
        build_tiny_tokenizer(["Cone"])


def test_tiny_is_seeded(tiny):
    assert fingerprint(*tiny) == fingerprint(*build_tiny(TINY))
    assert fingerprint(*tiny) != fingerprint(*build_tiny(dataclasses.replace(TINY, seed=1)))
    # The same weights under another config compute something else: the fingerprint says so.
    config = copy.deepcopy(tiny[0].config)
    config.vision_config.backbone_config.layer_norm_eps = 1e-2
    other = Sam3Model(config)
    other.load_state_dict(tiny[0].state_dict())
    assert weights_fingerprint(other) == weights_fingerprint(tiny[0])
    assert fingerprint(other, tiny[1]) != fingerprint(*tiny)


def test_save_pretrained_round_trip(tmp_path, tiny):
    manifest = materialise(CONFIG.model, CONFIG.tiny, tmp_path)
    assert read_manifest(tmp_path, "sam") == manifest
    assert manifest["input_size"] == [56, 56] and manifest["queries"] == 8
    model, processor = load_sam(tmp_path)
    assert weights_fingerprint(model) == manifest["weights_fingerprint"] == weights_fingerprint(tiny[0])
    assert fingerprint(model, processor) == manifest["fingerprint"] == fingerprint(*tiny)
    assert processor.tokenizer("traffic cone")["input_ids"] == tiny[1].tokenizer("traffic cone")["input_ids"]
    pixels = torch.randn(2, 3, 56, 56)
    loaded = prompt_outputs(model, pixels, encode_prompts(model, processor, PROMPTS))
    built = prompt_outputs(tiny[0], pixels, encode_prompts(*tiny, PROMPTS))
    torch.testing.assert_close(loaded.pred_masks, built.pred_masks)
    torch.testing.assert_close(loaded.pred_logits, built.pred_logits)
    # A local directory is also a valid `masks.model` (the real-checkpoint path): same weights, same files.
    again = materialise(str(tmp_path), CONFIG.tiny, tmp_path / "again")
    assert again["fingerprint"] == manifest["fingerprint"]


def test_unreachable_model_names_the_param(tmp_path):
    with pytest.raises(OSError, match=r"masks.model="):
        resolve(str(tmp_path / "missing"), CONFIG.tiny)


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match=r"masks.prompts: duplicate"):
        dataclasses.replace(CONFIG, prompts=("cone", "cone"))
    with pytest.raises(ValueError, match=r"masks.mask_threshold"):
        dataclasses.replace(CONFIG, mask_threshold=1.5)
    with pytest.raises(ValueError, match=r"masks.tiny.hidden_size"):
        dataclasses.replace(TINY, hidden_size=36)
    with pytest.raises(ValueError, match=r"masks.tiny.image_size"):
        dataclasses.replace(TINY, image_size=60)


def test_long_prompt_is_refused(tiny):
    with pytest.raises(ValueError, match=r"masks.prompts: .* tokens"):
        encode_prompts(*tiny, ["cone " * 40])


def test_prompts_share_one_image_encoding(tiny):
    """Batched prompts on one encoding give what P full forward passes (image encoded each time) give."""
    model, processor = tiny
    pixels = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    encodes = []
    hook = model.vision_encoder.register_forward_hook(lambda _m, args, _o: encodes.append(args[0].shape[0]))
    try:
        batched = prompt_outputs(model, pixels, encode_prompts(model, processor, PROMPTS))
    finally:
        hook.remove()
    assert encodes == [2]  # the image encoder ran once, on the two images
    tokens = processor(text=list(PROMPTS), return_tensors="pt")
    with torch.inference_mode():
        for b in range(2):
            for p in range(len(PROMPTS)):
                single = model(
                    pixel_values=pixels[b : b + 1],
                    input_ids=tokens["input_ids"][p : p + 1],
                    attention_mask=tokens["attention_mask"][p : p + 1],
                )
                row = b * len(PROMPTS) + p
                for name in ("pred_masks", "pred_logits", "presence_logits"):
                    got, want = getattr(batched, name)[row], getattr(single, name)[0]
                    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    # And the binary masks of all prompts at once equal those of one prompt at a time.
    together = predict_masks(model, processor, pixels, encode_prompts(model, processor, PROMPTS), CONFIG)
    assert together.shape == (2, 3, 16, 16) and together.any() and not together.all()
    for p, prompt in enumerate(PROMPTS):
        alone = predict_masks(model, processor, pixels, encode_prompts(model, processor, [prompt]), CONFIG)
        assert torch.equal(together[:, p], alone[:, 0])


def test_prompts_are_encoded_once_for_any_number_of_images(tiny):
    model, processor = tiny
    prompts = encode_prompts(model, processor, PROMPTS)
    assert isinstance(prompts, Prompts) and prompts.features.shape[:2] == (3, 32)
    assert prompts.mask[:, 0].all() and not prompts.mask[:, -1].any()  # padded to 32 tokens


def _outputs(query_logits, presence_logits, mask_logits) -> Sam3ImageSegmentationOutput:
    queries = torch.tensor(query_logits, dtype=torch.float32)
    return Sam3ImageSegmentationOutput(
        pred_logits=queries,
        presence_logits=torch.tensor(presence_logits, dtype=torch.float32).view(-1, 1),
        pred_masks=torch.tensor(mask_logits, dtype=torch.float32),
        pred_boxes=torch.zeros(*queries.shape, 4),
    )


def test_union_keeps_instances_above_the_score_and_pixels_above_the_mask_threshold():
    processor = Sam3Processor(
        image_processor=Sam3ImageProcessor(size={"height": 56, "width": 56}), tokenizer=build_tiny_tokenizer()
    )
    masks = np.full((2, 3, 4, 4), -6.0)
    masks[0, 0, :2, :2] = 6.0  # query 0: top-left quadrant
    masks[0, 1] = 6.0  # query 1: everywhere, but its score is low
    masks[0, 2, 3, 3] = 0.5  # query 2: one pixel at probability 0.62 ...
    masks[0, 2, 3, 2] = -0.5  # ... and one at 0.38
    masks[1, 0] = 6.0  # row 1: confident mask, but the presence token says nothing is there
    # Scores = sigmoid(query) x sigmoid(presence): row 0 ~ (0.88, 0.12, 0.73), row 1 ~ 0.
    out = _outputs([[2.0, -2.0, 1.0], [4.0, 4.0, 4.0]], [20.0, -20.0], masks)
    union = union_masks(processor, out, score_threshold=0.5, mask_threshold=0.5)
    expected = np.zeros((2, 4, 4), dtype=bool)
    expected[0, :2, :2] = True
    expected[0, 3, 3] = True
    assert np.array_equal(union.numpy(), expected)
    # A stricter mask threshold drops the weak pixel; a stricter score threshold drops query 2.
    assert union_masks(processor, out, 0.5, 0.7)[0].sum() == 4
    assert union_masks(processor, out, 0.8, 0.5)[0].sum() == 4
    # A lower score threshold lets query 1 in: everything is covered.
    assert union_masks(processor, out, 0.1, 0.5)[0].all()
