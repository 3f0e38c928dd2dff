"""FOODS test-time augmentation: augmented views, the (image, augmentation) cache, weights, heads, and the
layering of refined predictions for `submit`."""

from __future__ import annotations

import io

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from roadwork.config import ConfigError, section
from roadwork.distributed import SINGLE, Ranks
from roadwork.ensemble.combine import pick_frames, variants
from roadwork.features.cache import ExtractConfig, FeatureCache
from roadwork.metrics import compare
from roadwork.models import build_model
from roadwork.predictions import read_layer
from roadwork.train.data import Table
from roadwork.train.loop import predict_with_model
from roadwork.tta import TtaConfig
from roadwork.tta.augment import AugSpec, ImageViews, grid_specs
from roadwork.tta.extract import (
    copy_clean_views,
    extract_tta,
    open_checked,
    open_for_writing,
    read_tokens,
    tta_attrs,
)
from roadwork.tta.foods import fit_distance, foods_probability, foods_weights, keep_closest
from roadwork.tta.heads import MemberTTA, Variant
from roadwork.views.crops import load_views
from roadwork.views.plan import ViewsConfig, view_boxes
from tests.test_dora import member, toy_table

VIEWS = ViewsConfig(grid=3, overlap=0.25)
FOODS = {"distance": "mahalanobis", "knn_k": 3, "shrinkage": None, "keep": 0.8, "temperature": 1.0}


def noise_jpeg(width: int, height: int, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
    image = Image.fromarray(pixels).resize((width, height), Image.Resampling.BILINEAR)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=90)
    return out.getvalue()


def tta_config(**overrides) -> TtaConfig:
    base = {
        "parts": ["test"],
        "members": None,
        "augmentations": [{}, {"flip": True}],
        "batch_views": 24,
        "chunk_rows": 1,
        "shard_rows": 2,
        "workers": 0,
        "device": "cpu",
        **FOODS,
    }
    return section(TtaConfig, {"tta": {**base, **overrides}}, "tta")


# --- augmentations -----------------------------------------------------------------------------------


def test_identity_reproduces_the_clean_views_bit_for_bit():
    data = noise_jpeg(640, 480)
    want = load_views(data, view_boxes(640, 480, VIEWS), 32, size=(640, 480))  # decoded at 1/4 scale
    np.testing.assert_array_equal(ImageViews(data, (640, 480), VIEWS, 32)(AugSpec()), want)


def test_flip_and_zoom_cut_the_right_pixels():
    data = noise_jpeg(640, 480, seed=1)
    views = ImageViews(data, (640, 480), VIEWS, 32)
    boxes = view_boxes(640, 480, VIEWS)
    left = boxes.copy()
    left[-1] = (0, 0, 480, 480)  # the mirrored image's right square is the original's left square
    flipped = views(AugSpec(flip=True))
    np.testing.assert_array_equal(flipped[-1], load_views(data, left, 32)[-1][:, ::-1])
    np.testing.assert_array_equal(flipped[0], views(AugSpec())[0][:, ::-1])  # global view: mirrored
    zoomed = view_boxes(320, 240, VIEWS) + np.array([160, 120, 160, 120])  # 2x: the central half
    np.testing.assert_array_equal(views(AugSpec(scale=2.0)), load_views(data, zoomed, 32))


def test_zoom_out_reflects_instead_of_painting_black_and_colour_is_pointwise():
    solid = Image.new("RGB", (160, 120), (100, 150, 50))
    out = io.BytesIO()
    solid.save(out, format="JPEG", quality=95)
    views = ImageViews(out.getvalue(), (160, 120), VIEWS, 16)
    zoomed_out = views(AugSpec(scale=0.5, dx=0.2)).astype(int)
    assert zoomed_out.shape == (12, 16, 16, 3)
    assert np.abs(zoomed_out - [100, 150, 50]).max() <= 3  # no black border anywhere
    clean = views(AugSpec()).astype(float)
    np.testing.assert_allclose(views(AugSpec(brightness=1.2)), np.clip(np.rint(clean * 1.2), 0, 255), atol=0)
    grey = views(AugSpec(saturation=0.0)).astype(int)
    assert np.abs(grey - grey[..., :1]).max() <= 1  # r = g = b
    low = views(AugSpec(contrast=0.5)).astype(float)
    np.testing.assert_allclose(low, np.rint((clean - 128) * 0.5 + 128), atol=0)


def test_specs_parse_name_and_fingerprint():
    config = tta_config(augmentations=[{}, {"flip": True, "scale": 1.1}, {"dx": 0.04}])
    assert [a.key() for a in config.augmentations] == ["identity", "flip,scale=1.1", "dx=0.04"]
    assert config.augmentations[1] == AugSpec(flip=True, scale=1.1)
    assert AugSpec().digest() != AugSpec(flip=True).digest() == AugSpec(flip=True).digest()
    assert len({s.digest() for s in grid_specs((-0.03, -0.01, 0.01, 0.03), (0.9, 1.0, 1.1))}) == 96
    with pytest.raises(ConfigError, match="listed more than once"):
        tta_config(augmentations=[{"flip": True}, {"flip": True, "scale": 1}])
    with pytest.raises(ConfigError, match="unknown key"):
        tta_config(augmentations=[{"flop": True}])
    with pytest.raises(ValueError, match=r"scale=3\.0 outside"):
        AugSpec(scale=3.0)


# --- the cache ---------------------------------------------------------------------------------------


class CountingEmbed:
    """A stand-in backbone: per view, the mean, min and max of its pixels per channel (deterministic)."""

    def __init__(self, fail_after: int | None = None):
        self.views, self.calls, self.fail_after = 0, 0, fail_after

    def __call__(self, views: np.ndarray) -> np.ndarray:
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise RuntimeError("killed")
        self.calls += 1
        self.views += len(views)
        v = views.astype(np.float32)
        return np.stack([v.mean(axis=(1, 2)), v.min(axis=(1, 2)), v.max(axis=(1, 2))], axis=1)


@pytest.fixture
def shard(tmp_path):
    """Five images in a parquet shard, and their index-like jobs."""
    sizes = [(96, 64), (64, 96), (80, 80), (96, 64), (120, 68)]
    images = [noise_jpeg(w, h, seed=i) for i, (w, h) in enumerate(sizes)]
    (tmp_path / "raw").mkdir()
    pq.write_table(pa.table({"image": pa.array(images, pa.binary())}), tmp_path / "raw" / "s.parquet")
    jobs = pl.DataFrame(
        {
            "image_id": [f"im{i}" for i in range(5)],
            "shard": ["s.parquet"] * 5,
            "row": list(range(5)),
            "width": [w for w, _ in sizes],
            "height": [h for _, h in sizes],
        }
    )
    return tmp_path, jobs


ATTRS = {"backbone_fingerprint": "b0", "view_rule_fingerprint": "v0", "side": 16}


def run_extract(root, jobs, specs, embed, attrs=ATTRS, ranks=SINGLE):
    caches = open_for_writing(
        root / "tta.zarr", tuple(specs), attrs=attrs, views=12, dim=3, chunk_rows=1, shard_rows=2
    )
    counts = extract_tta(
        caches=caches,
        jobs=jobs,
        raw_root=root / "raw",
        views=VIEWS,
        side=16,
        embed=embed,
        batch_views=30,
        ranks=ranks,
    )
    return caches, counts


def test_adding_an_augmentation_computes_only_the_new_one(shard):
    root, jobs = shard
    identity, flip, zoom = AugSpec(), AugSpec(flip=True), AugSpec(scale=1.1)
    embed = CountingEmbed()
    caches, counts = run_extract(root, jobs, [identity, flip], embed)
    assert embed.views == 5 * 2 * 12 and counts["computed"] == {"identity": 5, "flip": 5}
    first = read_tokens(caches[flip], ["im3", "im0"])
    embed = CountingEmbed()
    caches, counts = run_extract(root, jobs, [identity, flip, zoom], embed)
    assert embed.views == 5 * 12 and counts["computed"] == {"identity": 0, "flip": 0, "scale=1.1": 5}
    np.testing.assert_array_equal(read_tokens(caches[flip], ["im3", "im0"]), first)
    want = CountingEmbed()(ImageViews(_image_bytes(root, 2), (80, 80), VIEWS, 16)(zoom)).astype(np.float16)
    np.testing.assert_array_equal(read_tokens(caches[zoom], ["im2"])[0], want)


def test_the_identity_comes_from_the_feature_cache_not_the_backbone(shard):
    root, jobs = shard
    ids = jobs["image_id"].to_list()
    features = FeatureCache.create(
        root / "features.zarr", copies=2, views=12, dim=3, chunk_rows=2, shard_rows=4, attrs=ATTRS
    )
    clean = np.random.default_rng(0).normal(size=(5, 2, 12, 3, 3)).astype(np.float16)  # [n, C, V, 3, D]
    values = [features.row_values(f) for f in clean[::-1]]
    rows = features.ensure_rows(ids[::-1])  # another row order than the TTA cache's
    features.write(rows, {k: np.stack([v[k] for v in values]) for k in values[0]})
    identity, flip = AugSpec(), AugSpec(flip=True)
    caches = open_for_writing(
        root / "tta.zarr", (identity, flip), attrs=ATTRS, views=12, dim=3, chunk_rows=1, shard_rows=2
    )
    assert copy_clean_views(caches[identity], features, ids) == 5
    assert copy_clean_views(caches[identity], features, ids) == 0  # done: nothing copied twice
    np.testing.assert_array_equal(read_tokens(caches[identity], ids), clean[:, 0])  # copy 0, the clean one
    embed = CountingEmbed()
    _, counts = run_extract(root, jobs, [identity, flip], embed)
    assert counts["computed"] == {"identity": 0, "flip": 5} and embed.views == 5 * 12


def _image_bytes(root, row):
    return pq.read_table(root / "raw" / "s.parquet").column("image")[row].as_py()


def test_changing_foods_settings_computes_nothing(shard):
    root, jobs = shard
    before = tta_config()
    run_extract(root, jobs, before.augmentations, CountingEmbed())
    for after in (tta_config(temperature=0.1), tta_config(keep=0.5), tta_config(distance="knn", knn_k=1)):
        embed = CountingEmbed()
        run_extract(root, jobs, after.augmentations, embed)
        assert embed.views == 0 and embed.calls == 0
    embed = CountingEmbed()  # a new backbone does recompute, and says which caches are stale first
    run_extract(root, jobs, before.augmentations, embed, attrs={**ATTRS, "backbone_fingerprint": "b1"})
    assert embed.views == 5 * 2 * 12
    with pytest.raises(Exception, match="backbone_fingerprint"):
        open_checked(root / "tta.zarr", before.augmentations, ATTRS)


def test_a_killed_run_resumes_to_the_same_cache(shard):
    root, jobs = shard
    specs = [AugSpec(), AugSpec(brightness=1.1)]
    whole, _ = run_extract(root, jobs, specs, CountingEmbed())
    killed = root / "killed"
    killed.mkdir()
    (killed / "raw").symlink_to(root / "raw")
    with pytest.raises(RuntimeError, match="killed"):
        run_extract(killed, jobs, specs, CountingEmbed(fail_after=2))  # dies in the second block of 2 images
    embed = CountingEmbed()
    resumed, counts = run_extract(killed, jobs, specs, embed)
    assert counts["computed"] == {"identity": 3, "brightness=1.1": 3}  # the first block was kept
    ids = jobs["image_id"].to_list()
    for spec in specs:
        np.testing.assert_array_equal(read_tokens(resumed[spec], ids), read_tokens(whole[spec], ids))


def test_ranks_fill_only_their_own_shards_and_together_the_cache_of_one(shard):
    root, jobs = shard
    specs = [AugSpec(), AugSpec(flip=True)]
    one, _ = run_extract(root, jobs, specs, CountingEmbed())
    split = root / "split"
    split.mkdir()
    (split / "raw").symlink_to(root / "raw")
    # Shards of 2 rows: rank 0 owns shards 0 and 2 (images 0, 1, 4), rank 1 shard 1 (images 2, 3).
    caches, counts = run_extract(split, jobs, specs, CountingEmbed(), ranks=Ranks(0, 2, 0))
    assert counts["computed"] == {"identity": 3, "flip": 3}
    for cache in caches.values():
        assert cache.done_mask(np.arange(5)).tolist() == [True, True, False, False, True]
    caches, counts = run_extract(split, jobs, specs, CountingEmbed(), ranks=Ranks(1, 2, 1))
    assert counts["computed"] == {"identity": 2, "flip": 2}
    ids = jobs["image_id"].to_list()
    for spec in specs:
        np.testing.assert_array_equal(read_tokens(caches[spec], ids), read_tokens(one[spec], ids))


def test_tta_attrs_ignore_the_training_augmentation_seed():
    config = ExtractConfig(
        side=16,
        mean=(0.5,) * 3,
        std=(0.2,) * 3,
        aug_copies=1,
        seed=0,
        batch_images=1,
        chunk_rows=1,
        shard_rows=1,
        workers=0,
        device="cpu",
        splits=("test",),
        compile=False,
    )
    backbone, plan = {"fingerprint": "f", "patch_size": 16}, {"rule_fingerprint": "r"}
    other = ExtractConfig(**{**config.__dict__, "seed": 7, "batch_images": 4})
    assert tta_attrs(config, backbone=backbone, plan_meta=plan) == tta_attrs(
        other, backbone=backbone, plan_meta=plan
    )
    assert tta_attrs(config, backbone=backbone, plan_meta=plan)["side"] == 16


# --- FOODS -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["mahalanobis", "knn"])
def test_far_augmentations_get_less_weight(kind):
    rng = np.random.default_rng(0)
    train = rng.normal(size=(400, 8))
    distance = fit_distance(train, kind, k=5)
    near, far = np.zeros((1, 8)), np.full((1, 8), 4.0)
    d = np.stack([distance(near), distance(far)], axis=1)  # [1 image, 2 augmentations]
    assert d[0, 0] < d[0, 1]
    w = foods_weights(d, keep=1.0, temperature=1.0)
    assert w[0, 0] > w[0, 1] > 0 and w.sum() == pytest.approx(1.0)


def test_weights_sum_to_one_and_drop_the_farthest():
    d = np.random.default_rng(1).uniform(0, 5, (7, 16))
    w = foods_weights(d, keep=0.8, temperature=0.7)
    np.testing.assert_allclose(w.sum(axis=1), 1.0)
    assert ((w > 0).sum(axis=1) == 13).all()  # round(0.8 * 16)
    farthest = np.argsort(d, axis=1)[:, 13:]
    assert (np.take_along_axis(w, farthest, axis=1) == 0).all()
    kept = np.take_along_axis(w, np.argsort(d, axis=1)[:, :13], axis=1)
    assert (np.diff(kept, axis=1) <= 0).all()  # closer, heavier
    assert keep_closest(np.array([[3.0, 1.0, 2.0]]), 0.1).tolist() == [[False, True, False]]  # at least one


def test_mahalanobis_is_the_textbook_one_and_shrinks_when_rows_are_few():
    rng = np.random.default_rng(2)
    train = rng.normal(size=(300, 4)) @ np.diag([1.0, 2.0, 0.5, 3.0])
    model = fit_distance(train, "mahalanobis", shrinkage=0.0)
    x = rng.normal(size=(5, 4))
    inv = np.linalg.inv(np.cov(train, rowvar=False, bias=True))
    diff = x - train.mean(axis=0)
    np.testing.assert_allclose(model.raw(x), np.sqrt(np.einsum("ij,jk,ik->i", diff, inv, diff)), rtol=1e-9)
    few = rng.normal(size=(5, 16))  # a singular sample covariance: shrinkage makes it invertible
    for shrinkage in (None, 0.3):
        assert np.isfinite(
            fit_distance(few, "mahalanobis", shrinkage=shrinkage)(rng.normal(size=(3, 16)))
        ).all()


def test_one_augmentation_gives_its_own_probability():
    logits = np.array([[-2.0], [0.3], [4.0]])
    prob, w = foods_probability(logits, np.array([[5.0], [0.1], [9.0]]), keep=0.8, temperature=0.5)
    assert (w == 1.0).all()
    np.testing.assert_array_equal(prob, 1.0 / (1.0 + np.exp(-logits[:, 0])))


def test_head_tta_with_the_identity_only_equals_the_plain_prediction():
    config = member()
    spec = {
        "model": "head",
        "view_dim": 24,
        "n_views": 4,
        "width": 16,
        "layers": 1,
        "heads": 2,
        "vocab_sizes": {"weather": 3, "daytime": 2, "scene_environment": 4},
    }
    torch.manual_seed(0)
    head = build_model(spec).eval()
    rows, train = toy_table(30, seed=4), toy_table(60, seed=5)
    tokens = np.random.default_rng(6).normal(size=(30, 4, 3, 8)).astype(np.float16)  # [n, V, 3, D]
    train.features = np.concatenate([train.features] * 3, axis=-1)
    tta = tta_config(augmentations=[{}])
    member_tta = MemberTTA(
        "m",
        config=config,
        rows=rows,
        train=train,
        variants=[Variant("plain", [head], np.zeros(30, np.int64))],
        tta=tta,
    )
    member_tta.add(tokens)
    frame, weights = member_tta.frames("test")["plain"]
    plain = Table(rows.image_id, tokens.reshape(30, 1, 4, 24), rows.copies, rows.label, rows.meta, rows.group)
    want = predict_with_model(model=head, table=plain, config=config)
    np.testing.assert_array_equal(frame["prob"].to_numpy(), 1.0 / (1.0 + np.exp(-want.astype(np.float64))))
    assert (weights == 1.0).all() and frame["kept"].to_list() == [1] * 30


def test_variant_routes_rows_to_their_fold_model_or_the_mean():
    variant = Variant("dora", [None, None], np.array([1, -1, 0]))
    per_model = np.array([[1.0, 2.0, 3.0], [10.0, 20.0, 30.0]])
    np.testing.assert_array_equal(variant.combine(per_model), [10.0, 11.0, 3.0])


# --- combining refined predictions for submit --------------------------------------------------------


def frame(logits, ids=("a", "b", "c", "d"), labels=(1, 0, 1, 0)):
    logits = np.asarray(logits, dtype=np.float64)
    return pl.DataFrame(
        {
            "image_id": list(ids),
            "split": "test",
            "label": list(labels),
            "group": ["g1", "g1", "g2", "g3"][: len(ids)],
            "logit": logits,
            "prob": 1 / (1 + np.exp(-logits)),
        }
    )


def test_layers_pick_the_most_refined_frame_per_member():
    base = {"head": frame([1, 1, 1, 1]), "mlp": frame([3, 3, 3, 3])}
    dora, tta, tta_dora = (
        {"head": frame([2, 2, 2, 2])},
        {"head": frame([5, 5, 5, 5])},
        {"head": frame([7] * 4)},
    )
    assert pick_frames(["head", "mlp"], base, dora)[0]["logit"][0] == 2.0
    rows = variants(["head", "mlp"], base, dora, tta, tta_dora)
    want = {"best_single": 1.0, "ensemble": 2.0, "ensemble+dora": 2.5, "ensemble+tta": 4.0}
    assert {k: v["logit"][0] for k, v in rows.items()} == want | {"ensemble+dora+tta": 5.0}
    with pytest.raises(ValueError, match="base layer lacks member"):
        pick_frames(["head", "wider"], base)


def test_compare_reports_a_change_of_nothing_plainly_and_refuses_other_rows():
    same = compare(frame([1.0, -1.0, 2.0, -2.0]), frame([1.0, -1.0, 2.0, -2.0]), 0.5, 50)
    assert same["mean_abs_delta_logit"] == 0.0 and same["delta_mcc"] == 0.0 and same["decisions_changed"] == 0
    flipped = compare(frame([1.0, -1.0, 2.0, -2.0]), frame([1.0, 1.0, 2.0, -2.0]), 0.5, 50)
    assert flipped["decisions_changed"] == 1 and flipped["delta_mcc"] < 0
    assert flipped["mean_abs_delta_logit"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="different rows"):
        compare(frame([1, 2, 3, 4]), frame([1, 2, 3], ids=("a", "b", "x"), labels=(1, 0, 1)), 0.5, 10)


def test_read_layer_skips_absent_members_and_checks_columns(tmp_path):
    (tmp_path / "head").mkdir()
    frame([0.5] * 4).write_parquet(tmp_path / "head" / "test.parquet")
    assert list(read_layer(tmp_path, ["head", "mlp"], "test")) == ["head"]
    (tmp_path / "bad").mkdir()
    frame([0.5] * 4).drop("group").write_parquet(tmp_path / "bad" / "test.parquet")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['group'\]"):
        read_layer(tmp_path, ["bad"], "test")
