import numpy as np
import polars as pl
import pytest

from roadwork.features.text import DIM, TextConfig, build_text_cache, embed_texts, load_encoder, read_text


@pytest.fixture(scope="module")
def encoder():
    return load_encoder("cpu")


def test_embeddings_nulls_and_meaning(encoder):
    texts = [
        "orange traffic cones close the right lane",
        None,
        "a sunny beach with palm trees",
        "construction cones on the road",
        "orange traffic cones close the right lane",
    ]
    emb, mask = embed_texts(encoder, texts, batch_size=2)
    assert emb.shape == (5, DIM) and mask.tolist() == [True, False, True, True, True]
    assert np.all(emb[1] == 0)
    np.testing.assert_allclose(np.linalg.norm(emb[mask], axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(emb[0], emb[4])
    # The real MiniLM: roadwork sentences are closer to each other than to an unrelated one.
    assert emb[0] @ emb[3] > emb[0] @ emb[2] + 0.2


def test_cache_round_trip_any_order(tmp_path, encoder):
    index = pl.DataFrame(
        {"image_id": ["a", "b", "c"], "scene_description": ["cones on a road", None, "a street"]}
    )
    counts = build_text_cache(index, tmp_path / "t.zarr", TextConfig(batch_size=8, device="cpu"))
    assert counts == {"rows": 3, "with_text": 2, "distinct": 2}
    emb, mask = read_text(tmp_path / "t.zarr", ["c", "a", "b"])
    direct, _ = embed_texts(encoder, ["a street", "cones on a road", None], batch_size=8)
    np.testing.assert_allclose(emb, direct, atol=1e-6)
    assert mask.tolist() == [True, True, False]
    with pytest.raises(KeyError, match=r"1 image\(s\) missing, e.g. zz"):
        read_text(tmp_path / "t.zarr", ["zz"])
