import numpy as np
import polars as pl
import pytest

from roadwork.ensemble.choose import rank_members
from roadwork.predictions import average_logits


def frame(ids, logits, labels):
    logits = np.asarray(logits, dtype=float)
    return pl.DataFrame(
        {
            "image_id": ids,
            "split": ["val"] * len(ids),
            "label": labels,
            "group": ids,
            "logit": logits,
            "prob": 1 / (1 + np.exp(-logits)),
        }
    )


def test_rank_by_validation_mcc():
    labels = [0, 1, 0, 1]
    val = {
        "good": frame(list("abcd"), [-2, 2, -2, 2], labels),
        "bad": frame(list("abcd"), [2, -2, 2, -2], labels),
        "meh": frame(list("abcd"), [-2, 2, 2, 2], labels),
    }
    ranking = rank_members(val, 0.5)
    assert [name for name, _ in ranking] == ["good", "meh", "bad"]
    assert ranking[0][1] == pytest.approx(1.0) and ranking[2][1] == pytest.approx(-1.0)


def test_rank_at_each_member_s_own_cut_ignores_a_shift_of_the_logits():
    labels = [0, 0, 1, 1, 0, 1]
    val = {
        "shifted": frame(list("abcdef"), [-6, -5, -3, -2, -4, -1], labels),  # separates, all below 0
        "noisy": frame(list("abcdef"), [-1, 2, 1, 3, -2, -1], labels),
    }
    at_half = rank_members(val, 0.5)
    assert [name for name, _ in at_half] == ["noisy", "shifted"] and dict(at_half)["shifted"] == 0.0
    own_cut = rank_members(val, None)
    assert [name for name, _ in own_cut] == ["shifted", "noisy"]
    assert dict(own_cut)["shifted"] == pytest.approx(1.0) and dict(own_cut)["noisy"] < 1.0


def test_average_aligns_rows_by_id():
    a = frame(["x", "y"], [1.0, -3.0], [1, 0])
    b = frame(["y", "x"], [1.0, 3.0], [0, 1])
    mean = average_logits([a, b])
    assert mean["image_id"].to_list() == ["x", "y"]
    np.testing.assert_allclose(mean["logit"].to_numpy(), [2.0, -1.0])
    np.testing.assert_allclose(mean["prob"].to_numpy(), 1 / (1 + np.exp(-np.array([2.0, -1.0]))))
    with pytest.raises(ValueError, match="different rows"):
        average_logits([a, frame(["x", "z"], [0.0, 0.0], [1, 0])])
