import numpy as np
import polars as pl
import pytest
import torch

from roadwork.config import ConfigError, load_params
from roadwork.models import build_model
from roadwork.models.folds import FoldMean
from roadwork.train.checkpoint import load_head, save_head
from roadwork.train.config import member_config
from roadwork.train.crossfit import cross_fit_member
from roadwork.train.data import Vocab, grouped_folds, split_train_val
from roadwork.train.loop import predict_with_model
from roadwork.train.member import fit_member
from tests.test_train import SPEC, config, toy_table

TOKEN_SPEC = SPEC | {"view_dim": 24, "metadata": False}  # views of 3 pooled tokens x 8 channels


def rows_of(table):
    return pl.DataFrame({"image_id": table.image_id, "label": table.label, "group": table.group})


def toy_folds(table, fraction=0.2, seed=0):
    """`prepare_folds`' output for an in-memory Table (every row labelled, one test Table)."""
    position = {image_id: k for k, image_id in enumerate(table.image_id)}
    test = toy_table(30, seed=9)
    folds = []
    for k, (fit, held) in enumerate(grouped_folds(rows_of(table), fraction, seed)):
        val = table.take([position[i] for i in held["image_id"]])
        val.fold = np.full(len(val), k)
        folds.append({"train": table.take([position[i] for i in fit["image_id"]]), "val": val, "test": test})
    return folds


def test_grouped_folds_partition_the_rows_and_fold_0_is_the_validation_split():
    rows = rows_of(toy_table(90, seed=0))
    folds = grouped_folds(rows, 0.2, seed=3)
    assert len(folds) == 5
    held = [set(h["image_id"]) for _, h in folds]
    assert sum(len(h) for h in held) == 90 and set().union(*held) == set(rows["image_id"])
    for fit, out in folds:
        assert set(fit["group"]).isdisjoint(set(out["group"])) and len(fit) + len(out) == 90
    fit0, val0 = split_train_val(rows, 0.2, seed=3)
    assert folds[0][1]["image_id"].to_list() == val0["image_id"].to_list()
    assert folds[0][0]["image_id"].to_list() == fit0["image_id"].to_list()


def test_fold_mean_averages_the_folds_and_answers_a_held_out_row_with_its_fold():
    torch.manual_seed(0)
    models = [build_model(SPEC).eval() for _ in range(3)]
    table = toy_table(6, seed=1)
    batch = table.batch(np.arange(6))
    each = torch.stack([m(batch)["logits"] for m in models])
    mean = FoldMean(models)(batch)["logits"]
    torch.testing.assert_close(mean, each.mean(0))
    fold = torch.tensor([0, 1, 2, -1, 1, -1])
    picked = FoldMean(models)(batch | {"fold": fold})["logits"]
    for row, k in enumerate(fold.tolist()):
        torch.testing.assert_close(picked[row], each[k, row] if k >= 0 else each[:, row].mean(0))
    with pytest.raises(ValueError, match="batch fold 3 out of range: 3 fold models"):
        FoldMean(models)(batch | {"fold": torch.tensor([3, 0, 0, 0, 0, 0])})
    with pytest.raises(ValueError, match="at least one fold model"):
        FoldMean([])


def test_cross_fit_holds_out_every_row_once_and_fold_0_is_the_plain_member():
    table = toy_table(120, seed=2)
    folds = toy_folds(table)
    recipe = config(model="mlp", metadata=False)
    trained = cross_fit_member(config=recipe, folds=folds, vocab=Vocab({}))
    assert sorted(trained.heldout) == sorted(table.image_id)
    for k, tables in enumerate(folds):
        assert {trained.heldout[i] for i in tables["val"].image_id} == {k}
        assert set(tables["train"].image_id).isdisjoint(tables["val"].image_id)
    assert len(trained.fold_results) == 5 and trained.result is trained.fold_results[0]
    torch.manual_seed(recipe.seed)
    plain, _, _ = fit_member(config=recipe, tables=folds[0], vocab=Vocab({}))
    for name, value in plain.state_dict().items():
        torch.testing.assert_close(trained.model.folds[0].state_dict()[name], value)
    # validation rows: fold 0's answer (out of sample); test rows: the mean of the five
    val = predict_with_model(model=trained.model, table=folds[0]["val"], config=recipe)
    want = predict_with_model(model=plain, table=folds[0]["val"], config=recipe)
    np.testing.assert_allclose(val, want, atol=1e-5)
    test = predict_with_model(model=trained.model, table=folds[0]["test"], config=recipe)
    each = [predict_with_model(model=m, table=folds[0]["test"], config=recipe) for m in trained.model.folds]
    np.testing.assert_allclose(test, np.mean(each, axis=0), atol=1e-5)


def test_a_saved_cross_fitted_member_reloads_with_its_held_out_folds(tmp_path):
    torch.manual_seed(0)
    model = FoldMean([build_model(TOKEN_SPEC).eval() for _ in range(2)])
    recipe = config(model="mlp", metadata=False)
    heldout = {"a": 0, "b": 1}
    vocab = Vocab({})
    with pytest.raises(ValueError, match="the fold of each row it held out"):
        save_head(tmp_path / "m", model=model, spec=TOKEN_SPEC, vocab=vocab, config=recipe, summary={})
    save_head(
        tmp_path / "m", model=model, spec=TOKEN_SPEC, vocab=vocab, config=recipe, summary={}, heldout=heldout
    )
    head = load_head(tmp_path / "m")
    assert head.heldout == heldout and len(head.model.folds) == 2
    tokens = np.random.default_rng(0).normal(size=(3, 4, 3, 8)).astype(np.float32)
    meta = toy_table(3, seed=0).meta
    features = torch.from_numpy(tokens.reshape(3, 4, 24))
    batch = {"views": features, **{k: torch.from_numpy(v) for k, v in meta.items()}}
    with torch.no_grad():
        pairs = [m(batch)["logits"] for m in model.folds]
    each = [(p[:, 1] - p[:, 0]).numpy() for p in pairs]
    ids = ["b", "a", "unseen"]
    want = [each[1][0], each[0][1], (each[0][2] + each[1][2]) / 2]  # held out by fold 1, fold 0, none
    np.testing.assert_allclose(head.logits(tokens, meta, head.folds_of(ids)), want, atol=1e-5)
    np.testing.assert_allclose(head.logits(tokens, meta), np.mean(each, axis=0), atol=1e-5)
    assert head.folds_of(ids).tolist() == [1, 0, -1]


def test_crossfit_is_for_mlp_members():
    params = load_params("params.yaml")
    member_config(params["train"], {"model": "mlp", "crossfit": True}, "m")
    with pytest.raises(ConfigError, match=r"train\.crossfit: MLP members only"):
        member_config(params["train"], {"model": "head", "crossfit": True}, "m")
