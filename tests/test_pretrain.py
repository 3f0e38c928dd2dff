"""The embedded default's pretrained backbone: shipped, loadable, reproducible, trained on its own scenes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import DINOv3ViTModel

from roadwork.config import load_params, section, to_dict
from roadwork.features.backbone import TinyBackboneConfig
from roadwork.features.manifest import weights_fingerprint
from roadwork.pretrain.corpus import KINDS, CorpusConfig, present, scene
from roadwork.pretrain.recipe import (
    FIRST_STEPS,
    RECORD_FILE,
    PretrainConfig,
    batch_order,
    distortion,
    pretrain,
    turn,
    turned,
)
from roadwork.synth.dataset import SynthConfig, generate
from roadwork.views import protocols as V

ROOT = Path(__file__).resolve().parents[1]
PARAMS = load_params(ROOT / "params.yaml")
SHIPPED = ROOT / PARAMS["backbone"]["model"]
RECORD = json.loads((SHIPPED / RECORD_FILE).read_text())
# Recipe options added after the shipped checkpoint was made, at the values that leave its recipe as it
# was (nothing turned: `turn` draws nothing at 0); its record predates them.
ADDED_SINCE = {"rotate": 0.0, "max_angle": 20.0}


def test_the_shipped_checkpoint_loads_the_real_way_with_the_tiny_config():
    model = DINOv3ViTModel.from_pretrained(SHIPPED, local_files_only=True)
    tiny = section(TinyBackboneConfig, PARAMS["backbone"], "tiny")
    assert (
        model.config.hidden_size == tiny.hidden_size
        and model.config.num_hidden_layers == tiny.num_hidden_layers
    )
    assert weights_fingerprint(model) == RECORD["fingerprint"]
    # made with the recipe the command runs; options added since, at values that change nothing of it
    assert RECORD["config"] | ADDED_SINCE == to_dict(PretrainConfig())


def test_the_command_s_first_steps_give_the_shipped_first_steps():
    tiny = section(TinyBackboneConfig, PARAMS["backbone"], "tiny")
    extract = PARAMS["extract"]
    _, record = pretrain(
        PretrainConfig(), tiny, mean=tuple(extract["mean"]), std=tuple(extract["std"]), steps=FIRST_STEPS
    )
    assert len(record["first_steps"]) == FIRST_STEPS
    for got, shipped in zip(record["first_steps"], RECORD["first_steps"], strict=True):
        for key in ("loss", "view", "patch", "attr"):  # bit for bit on one machine; float noise elsewhere
            assert got[key] == pytest.approx(shipped[key], rel=1e-4), (got["step"], key)


def test_batches_take_whole_scenes_in_a_seeded_order():
    config = PretrainConfig(corpus=CorpusConfig(scenes=20), steps=7, scenes_per_batch=4)
    batches = batch_order(config)
    assert len(batches) == 7 and all(len(b) == 4 for b in batches)
    assert sorted(i for b in batches[:5] for i in b) == list(range(20))  # one pass covers the corpus
    assert batch_order(config) == batches


def test_a_scene_has_views_cover_and_no_roadwork_label():
    out = scene(CorpusConfig(), 5)
    assert out["views"].shape == (16, 112, 112, 3) and out["cover"].shape == (16, len(KINDS), 7, 7)
    assert set(out) == {"views", "cover", "attrs", "jpeg"}  # targets: what is drawn, never a label
    assert present(out["cover"], 4.0).any()  # scenery at least is drawn in every scene


def test_a_challenge_copy_adds_its_12_views_and_leaves_the_frame_s_crops_alone():
    plain, copied = scene(CorpusConfig(), 5), scene(CorpusConfig(challenges=1), 5)
    assert copied["views"].shape == (16 + 12, 112, 112, 3) and copied["cover"].shape[0] == 16 + 12
    np.testing.assert_array_equal(copied["views"][:16], plain["views"])  # drawn after the crops
    np.testing.assert_array_equal(copied["cover"][:16], plain["cover"])
    assert present(copied["cover"][16:], 4.0).any()


def test_the_corpus_shares_no_image_with_the_dataset():
    """The corpus streams are seeded by a namespace no dataset unit uses; the bytes agree."""
    synth = section(SynthConfig, PARAMS, "synth")
    dataset = generate(synth, workers=2)
    dataset_hashes = {
        hashlib.sha256(r.row["image"]["bytes"]).hexdigest() for rows in dataset.values() for r in rows
    }
    corpus = CorpusConfig()
    spread = range(0, corpus.scenes, corpus.scenes // 100)  # 100 frames across the whole corpus
    corpus_hashes = {hashlib.sha256(scene(corpus, i)["jpeg"].tobytes()).hexdigest() for i in spread}
    assert len(corpus_hashes) == 100 and not corpus_hashes & dataset_hashes


@pytest.mark.parametrize("op, strength", [(op, k) for op in range(5) for k in (0, 1)])
def test_the_degraded_views_are_the_validator_s_distortions(op, strength):
    pixels = np.random.default_rng(op).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    x = torch.from_numpy(pixels / np.float32(255)).permute(2, 0, 1)[None].contiguous()
    got = distortion(op, strength, x, torch.Generator().manual_seed(0))[0].permute(1, 2, 0).numpy() * 255
    numpy_ops = [
        lambda p: V.saturate(p, V.SATURATION[strength]),
        lambda p: V.contrast(p, V.CONTRAST[strength]),
        lambda p: V.rescale(p, V.RESCALE[strength]),
        None,  # noise: random, compared by its statistics below
        lambda p: V.blur(p, V.BLUR_KERNEL[strength]),
    ]
    if numpy_ops[op] is not None:  # the validator's work on 8-bit pixels: within a grey level
        np.testing.assert_allclose(got, numpy_ops[op](pixels), atol=1.5)  # of 255
        return
    ycc = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
    added = (got - pixels) @ ycc.T  # the noise, back in YCbCr: independent, of the validator's variance
    expected = 255 * V.NOISE_VARIANCE[strength] ** 0.5 * np.array([V.NOISE_SCALE[0], *[V.NOISE_SCALE[1]] * 2])
    assert np.allclose(added.std(axis=(0, 1)), expected, rtol=0.02) and abs(added.mean()) < 0.5


@pytest.mark.parametrize("degrees", [-20.0, -7.5, 12.0, 20.0])
def test_a_turned_view_is_the_validator_s_rotation(degrees):
    x = torch.rand(2, 3, 112, 112, generator=torch.Generator().manual_seed(0))
    got = turned(x, torch.full((2,), np.radians(degrees)), torch.ones(2), "nearest")
    for view, out in zip(x, got, strict=True):
        assert torch.equal(out, V.rotate(view, degrees))


def test_turned_views_carry_their_cover_and_the_recipe_without_them_draws_nothing():
    g = torch.Generator().manual_seed(0)
    x, cover = torch.ones(64, 3, 112, 112), torch.full((64, 2, 7, 7), 255, dtype=torch.uint8)
    state = g.get_state()
    assert turn(x, cover, PretrainConfig(rotate=0.0), g) == (x, cover) and torch.equal(g.get_state(), state)
    x_t, cover_t = turn(x, cover, PretrainConfig(rotate=1.0), g)
    black = (x_t == 0).all(1).float()  # [B, H, W]: the fill
    share = torch.nn.functional.avg_pool2d(black[:, None], 16)[:, 0]  # per 16 px patch
    assert torch.allclose(1 - cover_t[:, 0].float() / 255, share, atol=0.2)
    assert torch.equal(cover_t[:, 0], cover_t[:, 1])
    cornered = black.flatten(1).amax(1) > 0
    assert 10 < cornered.sum() < 54  # half keep black corners, half are magnified until none is left
    assert black[:, 40:72, 40:72].sum() == 0  # the centre is never fill
