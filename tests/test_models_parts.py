"""Unit tests of the head's parts: pruning, pyramid, attention (gate, RoPE), GAFM, metadata encoder."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from roadwork.models.attention import AttentionBlock, MultiHeadAttention, apply_rope, rope_tables
from roadwork.models.gafm import GAFM, mean_pool
from roadwork.models.layers import gps_sinusoidal
from roadwork.models.meta import MetadataEncoder
from roadwork.models.pruning import ViewPruning, kept_count
from roadwork.models.pyramid import ProjectionPyramid
from tests.test_head import VOCAB, make_batch


def reference_attention(
    attn: MultiHeadAttention, x: torch.Tensor, positions=None, gate_input=None
) -> torch.Tensor:
    """Multi-head attention written out with einsum and softmax (the SDPA path must match it)."""
    b, n, w = x.shape
    h, d = attn.heads, attn.head_dim
    q, k, v = (t.view(b, n, h, d).transpose(1, 2) for t in attn.qkv_proj(x).split(w, dim=-1))
    if positions is not None:
        cos, sin = rope_tables(positions, d, attn.rope_base)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    scores = torch.einsum("bhid,bhjd->bhij", q, k) / math.sqrt(d)
    out = torch.einsum("bhij,bhjd->bhid", scores.softmax(-1), v).transpose(1, 2).reshape(b, n, w)
    if gate_input is not None:
        out = out * torch.sigmoid(attn.gate_proj(gate_input))
    return attn.out_proj(out)


# --- pruning -------------------------------------------------------------------------------------------


def test_kept_count_rounds_and_clamps():
    assert kept_count(12, 0.67) == 8
    assert kept_count(12, 1.0) == 12
    assert kept_count(1, 0.67) == 1
    assert kept_count(3, 0.01) == 1


def test_pruning_keeps_the_top_k_views_in_view_order():
    torch.manual_seed(0)
    prune = ViewPruning(16, 0.67).eval()
    views = torch.randn(5, 12, 16)
    out = prune(views)
    scores = prune.importance(views).squeeze(-1)
    expected = scores.topk(8, dim=1).indices.sort(dim=1).values
    assert torch.equal(out.index, expected)
    assert torch.equal(out.views, views.gather(1, expected[..., None].expand(-1, -1, 16)))
    assert out.views.shape == (5, 8, 16)
    assert torch.equal(out.keep.sum(1), torch.full((5,), 8.0))
    assert set(out.keep.unique().tolist()) <= {0.0, 1.0}
    assert torch.allclose(out.scores, torch.sigmoid(scores))


def test_pruning_train_mode_is_the_same_function_with_a_straight_through_gradient():
    torch.manual_seed(0)
    prune = ViewPruning(16, 0.5)
    views = torch.randn(4, 6, 16)
    trained = prune.train()(views)
    evaluated = prune.eval()(views)
    assert torch.equal(trained.views, evaluated.views)
    assert torch.equal(trained.keep, evaluated.keep)
    prune.train()
    prune(views).views.pow(2).sum().backward()
    grads = [p.grad for p in prune.importance.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


def test_pruning_off_passes_every_view_without_parameters():
    prune = ViewPruning(16, 0.67, enabled=False)
    views = torch.randn(3, 12, 16)
    out = prune(views)
    assert list(prune.parameters()) == []
    assert torch.equal(out.views, views)
    assert torch.equal(out.index, torch.arange(12).expand(3, 12))
    assert torch.equal(out.keep, torch.ones(3, 12))


def test_pruning_rejects_a_bad_ratio():
    with pytest.raises(ValueError, match="keep_ratio"):
        ViewPruning(16, 0.0)


# --- projection and pyramid ----------------------------------------------------------------------------


def test_pyramid_matches_its_formula_and_widths():
    torch.manual_seed(0)
    pyr = ProjectionPyramid(24, 512)
    assert [b[0].out_features for b in pyr.branches] == [512, 256, 128]
    assert pyr.merge.in_features == 896
    views = torch.randn(2, 5, 24)
    x = pyr.proj(views)
    expected = F.layer_norm(
        x + pyr.merge(torch.cat([F.gelu(b[0](x)) for b in pyr.branches], -1)),
        (512,),
        pyr.norm.weight,
        pyr.norm.bias,
    )
    assert torch.allclose(pyr(views), expected, atol=1e-5)


def test_pyramid_off_is_the_projection_alone():
    torch.manual_seed(0)
    on, off = ProjectionPyramid(24, 64), ProjectionPyramid(24, 64, pyramid=False)
    assert {n for n, _ in off.named_parameters()} == {"proj.weight", "proj.bias"}
    assert len(list(on.parameters())) > 2
    off.proj.load_state_dict(on.proj.state_dict())
    views = torch.randn(2, 5, 24)
    assert torch.equal(off(views), on.proj(views))
    assert not torch.allclose(on(views), off(views))


# --- attention ------------------------------------------------------------------------------------------


def test_plain_attention_matches_a_reference_implementation():
    torch.manual_seed(0)
    attn = MultiHeadAttention(32, 4, gating=False)
    x = torch.randn(3, 7, 32)
    assert torch.allclose(attn(x), reference_attention(attn, x), atol=1e-5)


def test_gate_is_a_sigmoid_of_the_input_applied_before_out_proj():
    torch.manual_seed(0)
    attn = MultiHeadAttention(32, 4, gating=True)
    x = torch.randn(3, 7, 32)
    assert torch.allclose(attn(x), reference_attention(attn, x, gate_input=x), atol=1e-5)


def test_gated_block_equals_plain_block_when_the_gate_is_forced_open():
    torch.manual_seed(0)
    gated = AttentionBlock(32, 4, gating=True)
    plain = AttentionBlock(32, 4, gating=False)
    shared = {k: v for k, v in gated.state_dict().items() if "gate_proj" not in k}
    assert set(shared) == set(plain.state_dict())
    plain.load_state_dict(shared)
    x = torch.randn(2, 8, 32)
    assert not torch.allclose(gated(x), plain(x), atol=1e-4)  # the gate really acts ...
    gated.attn.force_open = True
    assert torch.allclose(gated(x), plain(x), atol=1e-6)  # ... and forced open it is plain attention


def test_gating_off_has_no_gate_parameters():
    names = {n for n, _ in AttentionBlock(32, 4, gating=False).named_parameters()}
    assert not any("gate_proj" in n for n in names)
    assert {"attn.qkv_proj.weight", "attn.out_proj.weight"} <= names


def test_rope_matches_reference_and_changes_outputs():
    torch.manual_seed(0)
    attn = MultiHeadAttention(32, 4, gating=False, rope=True)
    x = torch.randn(2, 6, 32)
    positions = torch.tensor([[0, 1, 2, 5, 7, 11], [1, 2, 3, 4, 9, 10]])
    out = attn(x, positions=positions)
    assert torch.allclose(out, reference_attention(attn, x, positions=positions), atol=1e-5)
    attn.rope = False
    assert not torch.allclose(out, attn(x), atol=1e-4)


def test_rope_depends_only_on_relative_view_positions():
    torch.manual_seed(0)
    block = AttentionBlock(32, 4, rope=True)
    x = torch.randn(2, 6, 32)
    positions = torch.tensor([[0, 1, 2, 5, 7, 11]] * 2)
    assert torch.allclose(block(x, positions), block(x, positions + 3), atol=1e-5)
    assert not torch.allclose(block(x, positions), block(x, positions.flip(1)), atol=1e-4)


def test_rope_is_a_rotation():
    cos, sin = rope_tables(torch.tensor([[0, 4]]), 8)
    x = torch.randn(1, 2, 2, 8)
    rotated = apply_rope(x, cos, sin)
    assert torch.allclose(rotated[:, :, 0], x[:, :, 0])  # position 0: identity
    assert torch.allclose(rotated.norm(dim=-1), x.norm(dim=-1), atol=1e-5)
    with pytest.raises(ValueError, match="even head dimension"):
        rope_tables(torch.tensor([[0]]), 7)


# --- GAFM -------------------------------------------------------------------------------------------------


def test_gafm_shapes_weights_and_permutation_invariance():
    torch.manual_seed(0)
    gafm = GAFM(32, 4).eval()
    tokens = torch.randn(3, 8, 32)
    pooled, weights = gafm(tokens)
    assert pooled.shape == (3, 32) and weights.shape == (3, 8)
    assert torch.allclose(weights.sum(1), torch.ones(3))
    perm = torch.randperm(8)
    pooled_p, weights_p = gafm(tokens[:, perm])
    assert torch.allclose(pooled_p, pooled, atol=1e-5)
    assert torch.allclose(weights_p, weights[:, perm], atol=1e-6)


def test_gafm_closed_gate_removes_a_view_from_the_pool():
    torch.manual_seed(0)
    gafm = GAFM(32, 4).eval()
    with torch.no_grad():
        gafm.gate[-1].bias.fill_(0.0)
        gafm.gate[-1].weight.zero_()
        gafm.gate[-1].weight[0, 0] = 1.0  # gate logit = hidden unit 0: drive it per view via the input
    tokens = torch.randn(2, 4, 32)
    _, weights = gafm(tokens)
    hidden = F.gelu(gafm.gate[0](tokens))[..., 0]
    gate = torch.sigmoid(hidden)
    scores = gafm.score(
        gafm.refine(
            tokens
            + gafm.cross(
                gafm.cross_norm(tokens),
                context=gafm.cross_norm(tokens) * gate[..., None],
                attn_mask=~torch.eye(4, dtype=torch.bool),
            )
        )
    ).squeeze(-1)
    expected = gate * scores.exp()
    assert torch.allclose(weights, expected / expected.sum(1, keepdim=True), atol=1e-5)


def test_gafm_handles_a_single_view():
    pooled, weights = GAFM(32, 4)(torch.randn(2, 1, 32))
    assert torch.isfinite(pooled).all() and torch.equal(weights, torch.ones(2, 1))


def test_mean_pool_is_uniform():
    tokens = torch.randn(2, 4, 8)
    pooled, weights = mean_pool(tokens)
    assert torch.allclose(pooled, tokens.mean(1)) and torch.equal(weights, torch.full((2, 4), 0.25))


# --- metadata ---------------------------------------------------------------------------------------------


def test_metadata_layout_and_null_vectors():
    torch.manual_seed(0)
    enc = MetadataEncoder(VOCAB)
    assert enc.dim == 704
    batch = make_batch(6, n_views=2, view_dim=4, seed=1)
    batch["gps_mask"] = torch.tensor([True, False] * 3)
    batch["text_mask"] = torch.tensor([True, True, False] * 2)
    out = enc(batch)
    assert out.shape == (6, 704)
    gps = gps_sinusoidal(batch["lat"], batch["lon"], 128)
    assert torch.allclose(out[0, :128], gps[0])
    assert torch.equal(out[1, :128], enc.no_gps.detach())
    assert torch.equal(out[:, 128:192], enc.tags["weather"](batch["weather"]).detach())
    assert torch.equal(out[2, 320:], enc.no_text.detach())
    assert torch.allclose(out[0, 320:], enc.text_adapter(batch["text"][:1])[0], atol=1e-5)


def test_metadata_null_index_is_a_learnable_nonzero_row():
    enc = MetadataEncoder(VOCAB)
    for emb in enc.tags.values():
        assert emb.padding_idx is None and emb.weight[0].abs().sum() > 0 and emb.weight.requires_grad


def test_metadata_text_off_drops_the_slot_and_ignores_text():
    torch.manual_seed(0)
    enc = MetadataEncoder(VOCAB, text=False)
    assert enc.dim == 320 and not any("text" in n for n, _ in enc.named_parameters())
    batch = make_batch(4, n_views=2, view_dim=4, seed=2)
    other = {**batch, "text": torch.randn(4, 384), "text_mask": ~batch["text_mask"]}
    assert torch.equal(enc(batch), enc(other))


def test_metadata_rejects_out_of_vocabulary_indices():
    batch = make_batch(2, n_views=2, view_dim=4, seed=3)
    batch["scene"] = torch.tensor([0, 99])
    with pytest.raises(ValueError, match=r"batch\['scene'\].*scene_environment"):
        MetadataEncoder(VOCAB)(batch)
    with pytest.raises(ValueError, match="lacks"):
        MetadataEncoder({"weather": 3})
