import itertools

import numpy as np
import polars as pl
import pytest
import torch

from roadwork.config import ConfigError, load_params
from roadwork.models import build_model
from roadwork.train.config import member_config
from roadwork.train.data import (
    NULL,
    Table,
    Vocab,
    generated_flags,
    metadata_arrays,
    null_metadata,
    split_train_val,
    with_generated,
)
from roadwork.train.loop import epoch_order, lr_factor, predict_with_model, train_with_model


def config(**overrides):
    params = load_params("params.yaml")
    params["train"] = {
        **params["train"],
        "epochs": 8,
        "patience": 3,
        "batch_size": 16,
        "device": "cpu",
        "warmup_steps": 5,
        **overrides,
    }
    return member_config(params["train"], {}, "m")


def toy_table(n, seed, signal=1.5, copies=2):
    """Features where view 2's first channels carry the label (a small object seen by one tile)."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 2, n)
    feats = rng.normal(size=(n, copies, 4, 8)).astype(np.float16)
    feats[:, :, 2, :3] += (signal * label[:, None, None]).astype(np.float16)
    meta = {
        "lat": rng.uniform(30, 45, n).astype(np.float32),
        "lon": rng.uniform(-100, -75, n).astype(np.float32),
        "gps_mask": rng.random(n) > 0.1,
        "weather": rng.integers(0, 3, n),
        "daytime": rng.integers(0, 2, n),
        "scene": rng.integers(0, 4, n),
        "text": np.zeros((n, 384), np.float32),
        "text_mask": np.zeros(n, bool),
    }
    table = Table(
        [f"i{i}" for i in range(n)],
        feats,
        np.full(n, copies),
        label.astype(np.int64),
        meta,
        [f"g{i // 3}" for i in range(n)],
    )
    table.weight = np.where(np.arange(n) % 2 == 0, 5.0, 0.3)
    table.near = np.arange(n) % 2 == 0
    return table


def seeded_model(seed=0):
    torch.manual_seed(seed)
    return build_model(SPEC)


SPEC = {
    "model": "mlp",
    "view_dim": 8,
    "n_views": 4,
    "hidden": 32,
    "dropout": 0.1,
    "metadata": True,
    "pool": "meanmax",
    "vocab_sizes": {"weather": 3, "daytime": 2, "scene_environment": 4},
}


def test_mlp_pools_views_by_mean_and_max_or_lays_them_side_by_side():
    from tests.test_head import VOCAB, make_batch

    batch = make_batch(3, n_views=4, view_dim=8)
    shuffled = {**batch, "views": batch["views"][:, [2, 0, 3, 1]]}
    spec = SPEC | {"vocab_sizes": VOCAB}
    for pool, order_matters in (("meanmax", False), ("views", True)):
        torch.manual_seed(0)
        model = build_model(spec | {"pool": pool}).eval()
        logits = model(batch)["logits"]
        assert logits.shape == (3, 2)
        assert torch.allclose(logits, model(shuffled)["logits"], atol=1e-5) != order_matters
    assert build_model(spec | {"pool": "views"}).mlp[0].in_features == 4 * 8 + (
        build_model(spec).mlp[0].in_features - 2 * 8
    )
    with pytest.raises(ValueError, match="pool='sum'"):
        build_model(spec | {"pool": "sum"})


def test_hidden_zero_is_a_logistic_regression_on_the_normalised_views():
    model = build_model(SPEC | {"pool": "views", "hidden": 0, "metadata": False})
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 1 and linears[0].in_features == 4 * 8 and linears[0].out_features == 2
    model.eval()
    x = torch.randn(5, 4, 8)
    normalised = model.norm(model.input_norm(x).flatten(1))  # what the one layer sees
    torch.testing.assert_close(model({"views": x})["logits"], linears[0](normalised))


def test_baseline_learns_the_signal():
    cfg = config(lr=1e-3, epochs=12, patience=12, gps_weighting=True)
    model = seeded_model()
    records = []
    result = train_with_model(
        model=model, train=toy_table(256, 0), val=toy_table(96, 1), config=cfg, log=records.append
    )
    assert result.best_val_mcc > 0.35  # chance is 0; measured 0.5 with these settings
    assert len(records) == result.epochs_run and result.epochs_run <= cfg.epochs
    assert all(r["sampled_near_share"] > 0.8 for r in records)  # 5.0 vs 0.3 weights: ~94 % near
    test = toy_table(96, 2)
    logit = predict_with_model(model=model, table=test, config=cfg)
    assert ((logit > 0) == test.label).mean() > 0.6
    np.testing.assert_array_equal(logit, predict_with_model(model=model, table=test, config=cfg))


def test_training_is_reproducible():
    cfg = config(epochs=2)
    a = train_with_model(model=seeded_model(), train=toy_table(64, 0), val=toy_table(32, 1), config=cfg)
    b = train_with_model(model=seeded_model(), train=toy_table(64, 0), val=toy_table(32, 1), config=cfg)
    assert a.history == b.history


def test_early_stopping_on_noise():
    cfg = config(epochs=30, patience=2)
    result = train_with_model(
        model=seeded_model(), train=toy_table(64, 0, signal=0.0), val=toy_table(64, 1, signal=0.0), config=cfg
    )
    assert result.epochs_run < 30
    assert result.epochs_run == result.best_epoch + 1 + cfg.patience


@pytest.mark.parametrize("select", ["mcc", "roc_auc"])
def test_the_best_epoch_is_the_first_with_the_best_selected_score(select):
    cfg = config(epochs=10, patience=10, select=select)
    train, val = toy_table(128, 0, signal=0.8), toy_table(64, 1, signal=0.8)
    result = train_with_model(model=seeded_model(), train=train, val=val, config=cfg)
    scores = [r[f"val/{select}"] for r in result.history]
    assert result.best_epoch == int(np.argmax(scores))  # argmax: the first of equal bests
    assert result.best_val_mcc == result.history[result.best_epoch]["val/mcc"]


def test_select_must_be_a_known_score():
    with pytest.raises(ConfigError, match=r"train\.select='loss'"):
        config(select="loss")


def test_lr_schedule_warmup_capped_then_cosine():
    cfg = config(warmup_steps=500, warmup_cap=0.1)
    total = 100  # warmup capped at 10 steps
    factors = [lr_factor(s, total, cfg) for s in range(total)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(1.0) and factors[-1] < 0.01
    assert all(a >= b for a, b in itertools.pairwise(factors[9:]))


def test_gps_weighting_switch():
    table = toy_table(1000, 0)
    rng = np.random.default_rng(0)
    weighted = epoch_order(table, config(gps_weighting=True), rng)
    uniform = epoch_order(table, config(gps_weighting=False), rng)
    assert table.near[weighted].mean() > 0.9
    assert sorted(uniform.tolist()) == list(range(1000))


def test_generated_images_take_their_share_of_the_draws_and_follow_their_sources():
    table = toy_table(1000, 0)
    table.generated = np.arange(1000) >= 800  # 200 generated images
    rng = np.random.default_rng(0)
    assert epoch_order(table, config(generated_share=None), rng).tolist() != list(range(1000))
    natural = epoch_order(table, config(generated_share=None), rng)
    assert sorted(natural.tolist()) == list(range(1000))  # null: every row once, as any row
    half = epoch_order(table, config(generated_share=0.5), rng)
    assert 0.45 < table.generated[half].mean() < 0.55
    gps_too = epoch_order(table, config(generated_share=0.2, gps_weighting=True), rng)
    assert 0.15 < table.generated[gps_too].mean() < 0.25 and table.near[gps_too].mean() > 0.9
    rows = pl.DataFrame({"image_id": ["a", "b"], "label": [1, 0]})
    generated = pl.DataFrame({"image_id": ["ga", "gc"], "label": [1, 1], "source_image_id": ["a", "c"]})
    both = with_generated(rows, generated, config())
    assert both["image_id"].to_list() == ["a", "b", "ga"] and both["generated"].to_list() == [
        False,
        False,
        True,
    ]
    assert len(with_generated(rows, generated, config(generated_share=0.0))) == 2
    assert generated_flags(rows).tolist() == [False, False]
    with pytest.raises(ConfigError, match="generated_share"):
        config(generated_share=1.0)


def test_batch_draws_copies_per_view():
    table = toy_table(4, 0, copies=2)
    table.features[:, 1] = table.features[:, 0] + 10  # copy 1 is recognisable
    clean = table.batch(np.arange(4))["views"]
    assert torch.all(clean < 9)
    drawn = table.batch(np.arange(4), np.random.default_rng(0))["views"]
    from_copy1 = (drawn > 5).all(dim=-1)
    assert from_copy1.any() and (~from_copy1).any()  # views of one image draw their copies independently


def test_grouped_split_keeps_groups_apart():
    rows = pl.DataFrame(
        {
            "image_id": [f"i{i}" for i in range(100)],
            "label": [i % 2 for i in range(100)],
            "group": [f"vid:{i // 4}" for i in range(100)],
        }
    )
    train, val = split_train_val(rows, 0.2, seed=0)
    assert set(train["group"]).isdisjoint(set(val["group"]))
    assert len(train) + len(val) == 100 and 10 <= len(val) <= 30
    assert 0.3 < val["label"].mean() < 0.7


def test_grouped_split_with_few_groups_holds_out_one_group_and_refuses_one():
    rows = pl.DataFrame(
        {"label": [0, 1, 0, 1, 0, 1, 0, 1], "group": ["a", "a", "b", "b", "c", "c", "d", "d"]}
    )
    train, val = split_train_val(rows, 0.2, seed=0)  # 1/0.2 = 5 parts, but only 4 groups
    assert val["group"].n_unique() == 1 and len(train) == 6
    with pytest.raises(ValueError, match="2 row\\(s\\) form 1 group"):
        split_train_val(rows[:2], 0.2, seed=0)


def test_vocab_null_first_and_unseen_to_null():
    rows = pl.DataFrame(
        {
            "weather": [["Rain"], [], ["Sunny", "Fog"]],
            "daytime": ["Light", None, "Dark"],
            "scene_environment": ["Urban", "Urban", None],
        }
    )
    vocab = Vocab.fit(rows)
    assert vocab.values["weather"] == [NULL, "Rain", "Sunny"]
    assert vocab.encode("daytime", pl.Series(["Dark", None, "Dusk"])).tolist() == [1, 0, 0]
    assert vocab.sizes() == {"weather": 3, "daytime": 3, "scene_environment": 2}


def test_without_metadata_is_what_predict_gives_an_image_that_arrives_without_any():
    rows = pl.DataFrame(
        {
            "lat": [40.1, None, 41.0],
            "lon": [-74.0, None, -73.5],
            "weather": [["Rain"], [], ["Sunny", "Fog"]],
            "daytime": ["Light", None, "Dark"],
            "scene_environment": ["Urban", "Urban", None],
        }
    )
    vocab = Vocab.fit(rows)
    text = (np.ones((3, 384), np.float32), np.ones(3, bool))
    table = toy_table(3, 0)
    table.meta = metadata_arrays(rows, vocab, text)
    bare = table.without_metadata()
    served = metadata_arrays(null_metadata(3), vocab, (np.zeros((3, 384), np.float32), np.zeros(3, bool)))
    assert sorted(bare.meta) == sorted(served)
    for key, value in served.items():
        np.testing.assert_array_equal(bare.meta[key], value, err_msg=key)
    assert table.meta["gps_mask"].any() and table.meta["text_mask"].all()  # the original is untouched
    np.testing.assert_array_equal(bare.features, table.features)
