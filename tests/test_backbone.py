import json

import pytest
import torch

from roadwork.features.backbone import (
    BackboneConfig,
    TinyBackboneConfig,
    build_tiny,
    load_backbone,
    materialise,
    pooled_tokens,
    resolve,
)
from roadwork.features.manifest import read_manifest, weights_fingerprint

TINY = TinyBackboneConfig(
    seed=0,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    num_register_tokens=4,
    patch_size=16,
)


def test_tiny_is_seeded():
    a, b = build_tiny(TINY), build_tiny(TINY)
    other = build_tiny(TinyBackboneConfig(**{**TINY.__dict__, "seed": 1}))
    assert weights_fingerprint(a) == weights_fingerprint(b)
    assert weights_fingerprint(a) != weights_fingerprint(other)


def test_save_pretrained_round_trip(tmp_path):
    manifest = materialise(BackboneConfig(model="tiny", dtype="float32", tiny=TINY), tmp_path)
    assert (
        read_manifest(tmp_path, "backbone")
        == manifest
        == json.loads((tmp_path / "fingerprint.json").read_text())
    )
    assert manifest["hidden_size"] == 32 and manifest["num_register_tokens"] == 4
    loaded = load_backbone(tmp_path)
    assert weights_fingerprint(loaded) == manifest["fingerprint"]
    x = torch.randn(2, 3, 32, 48)
    with torch.inference_mode():
        assert torch.allclose(pooled_tokens(loaded, x), pooled_tokens(build_tiny(TINY), x), atol=1e-6)
    # A local directory is also a valid `backbone.model` (the real-checkpoint path).
    again = resolve(BackboneConfig(model=str(tmp_path), dtype="float32", tiny=TINY))
    assert weights_fingerprint(again) == manifest["fingerprint"]


def test_pooled_tokens_skip_registers():
    model = build_tiny(TINY)
    x = torch.randn(3, 3, 64, 32)  # 4 x 2 = 8 patches of 16 px
    with torch.inference_mode():
        hidden = model(pixel_values=x).last_hidden_state
        pooled = pooled_tokens(model, x)
    assert hidden.shape == (3, 1 + 4 + 8, 32)
    assert pooled.shape == (3, 3, 32)
    patches = hidden[:, 5:]
    torch.testing.assert_close(pooled[:, 0], hidden[:, 0])
    torch.testing.assert_close(pooled[:, 1], patches.mean(1))
    torch.testing.assert_close(pooled[:, 2], patches.amax(1))


def test_unreachable_model_names_the_param(tmp_path):
    with pytest.raises(OSError, match=r"backbone.model="):
        resolve(BackboneConfig(model=str(tmp_path / "missing"), dtype="float32", tiny=TINY))


def test_bad_dtype(tmp_path):
    materialise(BackboneConfig(model="tiny", dtype="float32", tiny=TINY), tmp_path)
    with pytest.raises(ValueError, match=r"backbone.dtype"):
        load_backbone(tmp_path, dtype="int8")
