"""Validator-style challenge sets, the calibration of the served probability, and validator-style
training copies."""

from __future__ import annotations

import io

import numpy as np
import polars as pl
import pytest
from PIL import Image

from roadwork.ensemble.calibrate import IDENTITY, best_cut, fit_calibration
from roadwork.features.cache import ExtractConfig
from roadwork.features.extract import challenge_copy
from roadwork.train.data import Table
from roadwork.views.challenges import (
    COLUMNS,
    TABLE_FILE,
    ChallengeConfig,
    Source,
    balanced,
    build_challenges,
    folder_source,
    generated_source,
)
from roadwork.views.plan import ViewsConfig
from roadwork.views.protocols import PROTOCOLS
from tests.natix_fixture import jpeg_bytes

CONFIG = ChallengeConfig(seed=3, max_per_domain=None)


def rows(labels: list[int], prefix: str = "img") -> pl.DataFrame:
    n = len(labels)
    return pl.DataFrame(
        {
            "image_id": [f"{prefix}{i:03d}" for i in range(n)],
            "source_id": list(range(n)),
            "label": labels,
            "group": [f"g{i // 2}" for i in range(n)],
        }
    )


def test_balanced_draws_as_many_of_each_label_whatever_the_row_order():
    frame = rows([1] * 7 + [0] * 20)
    picked = balanced(frame, None, np.random.default_rng(0))
    assert picked["label"].sum() == 7 and len(picked) == 14
    again = balanced(frame.reverse(), None, np.random.default_rng(0))
    assert again.equals(picked)
    assert len(balanced(frame, 6, np.random.default_rng(0))) == 6


def source(labels: list[int]) -> Source:
    frame = rows(labels)
    data = {i: jpeg_bytes(160, 90, (40 * (k % 6), 90, 120)) for k, i in enumerate(frame["image_id"])}
    return Source(
        {"val": frame.head(len(frame) // 2), "test": frame.tail(len(frame) - len(frame) // 2)},
        data.__getitem__,
    )


def test_build_writes_every_protocol_on_the_same_balanced_images(tmp_path):
    def build(out):
        return build_challenges({"real": source([1, 0] * 20)}, out, protocols=PROTOCOLS, config=CONFIG)

    table = build(tmp_path)
    assert table.columns == list(COLUMNS) and pl.read_parquet(tmp_path / TABLE_FILE).equals(table)
    for (part, protocol), frame in table.group_by("part", "protocol"):
        assert frame["label"].sum() * 2 == len(frame), (part, protocol)
        assert frame["file"].str.starts_with(f"{part}/{protocol}/real/").all()
    by_protocol = {p: f.sort("image_id")["image_id"].to_list() for (p,), f in table.group_by("protocol")}
    assert by_protocol["crop"] == by_protocol["letterbox"] == by_protocol["native"]  # paired images
    levels = {p: f["level"] for (p,), f in table.group_by("protocol")}
    assert levels["native"].null_count() == len(levels["native"])  # no augmentation, no level
    for protocol in ("crop", "letterbox"):
        assert set(levels[protocol].to_list()) <= {0, 1, 2, 3} and levels[protocol].n_unique() > 1
    for protocol, file in table.select("protocol", "file").iter_rows():
        image = Image.open(tmp_path / file)
        assert image.format == "JPEG" and image.size == ((160, 90) if protocol == "native" else (224, 224))
    assert build(tmp_path / "again").equals(table)
    assert all((tmp_path / f).read_bytes() == (tmp_path / "again" / f).read_bytes() for f in table["file"])


def test_generated_half_from_a_folder_or_nothing(tmp_path):
    assert generated_source(tmp_path / "missing", set(), None) is None
    (tmp_path / "empty").mkdir()
    assert generated_source(tmp_path / "empty", set(), None) is None
    for part in ("val", "test"):
        for name, colour in (("roadwork", (250, 120, 0)), ("none", (60, 60, 60))):
            folder = tmp_path / "gen" / part / name
            folder.mkdir(parents=True)
            for k in range(2):
                (folder / f"{k}.jpg").write_bytes(jpeg_bytes(64 + k, 48, colour))
    found = folder_source(tmp_path / "gen")
    assert sorted(found.parts) == ["test", "val"] and len(found.parts["val"]) == 4
    assert found.parts["val"]["label"].sum() == 2
    first = found.parts["test"]["image_id"][0]
    assert Image.open(io.BytesIO(found.read(first))).size[1] == 48


def test_calibration_puts_the_best_cut_at_one_half():
    rng = np.random.default_rng(0)
    label = rng.integers(0, 2, 400)
    logit = 2.0 * label - 0.5 + rng.normal(0, 1.0, 400)  # the best cut sits near 0.5, not 0
    cut = best_cut(logit, label)
    calibration = fit_calibration(logit, label)
    assert calibration.threshold == cut and 0.0 < cut < 1.0
    assert calibration.probability(cut) == pytest.approx(0.5)
    pred = calibration.probability(logit) > 0.5
    assert ((logit > cut) == pred).all()  # the same decisions as the cut
    assert 1.0 < calibration.slope < 3.0  # data drawn with slope ~2 on a unit-noise logit
    np.testing.assert_allclose(IDENTITY.probability([0.0, 2.0]), [0.5, 1 / (1 + np.exp(-2.0))])
    with pytest.raises(ValueError, match="one label"):
        fit_calibration(logit, np.ones_like(label))


def extract_config(**protocols: float) -> ExtractConfig:
    return ExtractConfig(
        side=32, mean=(0.5,) * 3, std=(0.5,) * 3, seed=0, aug_copies=0, batch_images=1, chunk_rows=1,
        shard_rows=1, workers=0, device="cpu", splits=("train",), compile=False, challenge_copies=1,
        challenge_protocols=protocols,
    )  # fmt: skip


def test_challenge_copy_is_a_protocol_jpeg_cut_as_served_and_seeded():
    pixels = np.random.default_rng(0).integers(0, 256, (270, 480, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    data = buffer.getvalue()
    views = ViewsConfig(grid=3, overlap=0.25, small_side=256, small_rule="global")
    config = extract_config(crop=1.0)
    first = challenge_copy(data, (480, 270), key="a/2", config=config, views=views)
    again = challenge_copy(data, (480, 270), key="a/2", config=config, views=views)
    assert first.shape == (12, 32, 32, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(first[0], first[5])  # the small rule "global": every view the same
    native = challenge_copy(data, (480, 270), key="a/2", config=extract_config(native=1.0), views=views)
    assert not np.array_equal(native[1], native[5])  # full size: tiles, not the small rule
    with pytest.raises(ValueError, match="crop"):
        extract_config(square=1.0)


def test_a_batch_takes_challenge_copies_whole_with_null_metadata():
    n, copies, views, dim = 64, 4, 3, 2
    features = np.zeros((n, copies, views, dim), np.float16)
    features[:, :, :, 0] = np.arange(copies)[None, :, None]  # the value says which copy
    meta = {"lat": np.ones(n, np.float32), "gps_mask": np.ones(n, bool), "weather": np.full(n, 2)}
    table = Table(
        [f"i{k}" for k in range(n)], features, np.full(n, copies), np.zeros(n, np.int64), meta, ["g"] * n
    )
    table.challenge_copies = 2  # copies 2 and 3 are validator-style
    out = table.batch(np.arange(n), np.random.default_rng(0), challenge_rate=0.5, meta_dropout=0.0)
    copy = out["views"][:, :, 0].numpy()
    whole = copy[:, 0] >= 2
    assert 10 < whole.sum() < 54  # about half the rows took a challenge copy
    assert (copy[whole] == copy[whole][:, :1]).all()  # one copy for every view of such a row
    assert (copy[~whole] < 2).all()  # the others mix clean and augmented copies only
    assert not out["gps_mask"][whole].any() and (out["weather"][whole] == 0).all()
    assert out["gps_mask"][~whole].all() and (out["weather_target"] == 2).all()  # the target stays
    dropped = table.batch(np.arange(n), np.random.default_rng(1), challenge_rate=0.0, meta_dropout=1.0)
    assert not dropped["gps_mask"].any() and (dropped["views"][:, :, 0] < 2).all()
