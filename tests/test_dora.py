"""DoRA fold fine-tuning: what the adapters touch, identity at init, merging, out-of-fold honesty."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from roadwork.config import ConfigError, load_params
from roadwork.models import build_model
from roadwork.train.checkpoint import save_head
from roadwork.train.config import member_config
from roadwork.train.data import Table, Vocab
from roadwork.train.dora import (
    FinetuneConfig,
    FoldRun,
    OutOfFoldError,
    adapter_report,
    assign_folds,
    attach_dora,
    check_out_of_fold,
    cross_fit,
    fold_average,
    load_fold_models,
    save_cross_fit,
    train_fold,
)
from roadwork.train.loop import TrainResult, predict_with_model

VOCAB = {"weather": 3, "daytime": 2, "scene_environment": 4}
SPEC = {
    "model": "head",
    "view_dim": 8,
    "n_views": 4,
    "vocab_sizes": VOCAB,
    "width": 16,
    "layers": 1,
    "heads": 2,
}


def finetune_config(**overrides) -> FinetuneConfig:
    base = {
        "split": "test",
        "members": None,
        "folds": 3,
        "seed": 0,
        "val_fraction": 0.25,
        "r": 4,
        "lora_alpha": 8,
        "lora_dropout": 0.0,
        "target_modules": ("qkv_proj", "out_proj"),
        "lr": 1e-2,
        "weight_decay": 0.02,
        "epochs": 2,
        "patience": 2,
        "device": "cpu",
    }
    return FinetuneConfig(**{**base, **overrides})


def member():
    params = load_params("params.yaml")
    train = {**params["train"], "batch_size": 16, "accumulation": 1, "device": "cpu"}
    return member_config(train, {"model": "head", "width": 16, "layers": 1, "heads": 2}, "m")


def toy_table(n=72, seed=0, unlabelled=0) -> Table:
    """View 2 carries the label; rows come in groups of three (a video's frames)."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 2, n)
    feats = rng.normal(size=(n, 1, 4, 8)).astype(np.float16)
    feats[:, :, 2, :3] += (1.5 * label[:, None, None]).astype(np.float16)
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
    label[:unlabelled] = -1
    groups = [f"g{i // 3}" for i in range(n)]
    return Table(
        [f"i{i}" for i in range(n)], feats, np.ones(n, np.int64), label.astype(np.int64), meta, groups
    )


def base_head():
    torch.manual_seed(0)
    model = build_model(SPEC)
    model.input_norm.fit(torch.from_numpy(toy_table().features[:, 0]))
    return model.eval()


def outputs(model, table):
    model.eval()
    with torch.no_grad():
        return model(table.batch(np.arange(len(table))))


@pytest.fixture(scope="module")
def trained_fold():
    """One fold trained with a large learning rate, so that its adapters are far from their init."""
    base, table = base_head(), toy_table()
    fold_of = assign_folds(table.label, table.group, 3, 0)
    run = train_fold(
        base=base, table=table, fold_of=fold_of, fold=0, config=finetune_config(), member=member()
    )
    return base, table, run


def test_config_refuses_too_few_folds():
    with pytest.raises(ConfigError, match="at least 2 folds"):
        finetune_config(folds=1)


def test_adapter_at_init_reproduces_the_base_head():
    base, table = base_head(), toy_table()
    adapted = attach_dora(base, finetune_config(), seed=0)
    want, got = outputs(base, table), outputs(adapted, table)
    for key in ("logits", "embedding", "view_logits"):
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=1e-6)
    assert adapter_report(adapted)["trainable_share"] < 0.5


def test_a_fold_changes_only_the_adapters(trained_fold):
    base, _, run = trained_fold
    before = base.state_dict()
    after = run.model.get_base_model().state_dict()
    compared = 0
    for key, value in after.items():
        if "lora_" in key:
            assert key.split(".lora_")[0].rsplit(".", 1)[-1] in ("qkv_proj", "out_proj"), key
            continue
        original = key.replace(".base_layer", "")
        assert torch.equal(value, before[original]), f"{original} moved"
        compared += 1
    assert compared == len(before)  # every base weight and buffer, InputNorm statistics included
    report = adapter_report(run.model)
    assert report["adapted_modules"] == [
        "blocks.0.attn.qkv_proj",
        "blocks.0.attn.out_proj",
        "gafm.cross.qkv_proj",
        "gafm.cross.out_proj",
        "gafm.refine.attn.qkv_proj",
        "gafm.refine.attn.out_proj",
    ]
    assert report["idle_adapters"] == []  # every adapter sits on a module the forward pass calls


def test_merge_and_unload_predicts_like_the_adapted_model(trained_fold):
    base, table, run = trained_fold
    adapted = outputs(run.model, table)["logits"]
    assert (adapted - outputs(base, table)["logits"]).abs().max() > 1e-3  # the adapter is not trivial
    merged = copy.deepcopy(run.model).merge_and_unload()
    assert not any("lora_" in name for name, _ in merged.named_parameters())
    torch.testing.assert_close(outputs(merged, table)["logits"], adapted, rtol=0, atol=1e-5)


def test_assign_folds_grouped_stratified_and_unlabelled_left_out():
    table = toy_table(90, seed=3, unlabelled=6)
    fold = assign_folds(table.label, table.group, 5, 0)
    assert (fold[:6] == -1).all() and set(fold[6:]) == set(range(5))
    for g in set(table.group):
        assert len({fold[i] for i in range(len(table)) if table.group[i] == g and fold[i] >= 0}) <= 1
    for k in range(5):
        assert set(table.label[fold == k]) == {0, 1}
    with pytest.raises(ValueError, match="only 4 labelled group"):
        assign_folds(table.label[:18], table.group[:18], 5, 0)  # rows 0-5 unlabelled: groups g2..g5


def test_cross_fit_predicts_every_labelled_row_once_out_of_fold():
    base, table = base_head(), toy_table(84, seed=1, unlabelled=3)
    config, recipe = finetune_config(epochs=1, lr=1e-3), member()
    fit = cross_fit(base=base, table=table, config=config, member=recipe)
    assert np.isnan(fit.oof_logit[:3]).all() and np.isfinite(fit.oof_logit[3:]).all()
    held = np.concatenate([run.heldout for run in fit.runs])
    assert sorted(held.tolist()) == list(range(3, 84))  # each labelled row exactly once
    for run in fit.runs:
        trained = set(run.fit) | set(run.val)
        assert not trained & set(run.heldout)
        assert trained == set(np.flatnonzero((fit.fold_of >= 0) & (fit.fold_of != run.fold)))
        assert not {table.group[i] for i in run.fit} & {
            table.group[i] for i in run.val
        }  # grouped inner split
        want = predict_with_model(model=run.model, table=table.take(run.heldout), config=recipe)
        np.testing.assert_allclose(fit.oof_logit[run.heldout], want, rtol=0, atol=1e-6)


def fake_run(fold, fit, val, heldout):
    result = TrainResult({}, 0, 0.0, 1)
    return FoldRun(fold, None, np.array(fit), np.array(val), np.array(heldout), result, 0.0)


def test_check_out_of_fold_rejects_leaks_gaps_and_doubles():
    labelled = np.array([True, True, True, True, False])
    check_out_of_fold(5, [fake_run(0, [2, 3], [], [0, 1]), fake_run(1, [0], [1], [2, 3])], labelled)
    with pytest.raises(OutOfFoldError, match="fold 1 predicts row 1, which it trained on"):
        check_out_of_fold(5, [fake_run(0, [2], [3], [0]), fake_run(1, [0], [1], [1, 2, 3])], labelled)
    with pytest.raises(OutOfFoldError, match="row 3 is predicted 0 time"):
        check_out_of_fold(5, [fake_run(0, [2, 3], [], [0, 1]), fake_run(1, [0], [1], [2])], labelled)
    with pytest.raises(OutOfFoldError, match="row 0 is predicted 2 time"):
        check_out_of_fold(5, [fake_run(0, [2, 3], [], [0, 1]), fake_run(1, [1], [], [0, 2, 3])], labelled)
    with pytest.raises(OutOfFoldError, match=r"row 4 is predicted 1 time.*expected 0"):
        check_out_of_fold(5, [fake_run(0, [2, 3], [], [0, 1, 4]), fake_run(1, [0], [1], [2, 3])], labelled)


def test_saved_adapters_reload_to_the_same_predictions(tmp_path, trained_fold):
    base, table, run = trained_fold
    recipe = member()
    spec = {**SPEC}
    save_head(tmp_path / "head", model=base, spec=spec, vocab=Vocab({}), config=recipe, summary={})
    second = dataclasses.replace(run, fold=1)
    fit = type("Fit", (), {"runs": [run, second]})()
    save_cross_fit(fit, table, tmp_path / "dora")
    models = load_fold_models(tmp_path / "head", tmp_path / "dora")
    assert len(models) == 2
    want = predict_with_model(model=run.model, table=table, config=recipe)
    np.testing.assert_allclose(fold_average(models, table, recipe), want, rtol=0, atol=1e-6)
    assert (tmp_path / "dora" / "folds.parquet").is_file()
