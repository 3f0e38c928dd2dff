"""The synthetic dataset: NATIX schema, encodings, nulls, broken rows, videos, determinism, pixels."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import itertools
import json
import math
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from roadwork.config import load_params, section, write_params
from roadwork.data.parse import ParseError, parse_gps, parse_list
from roadwork.data.schema import HF_METADATA, RAW_SCHEMA, SHARD_RE
from roadwork.synth.dataset import (
    CITIES,
    SynthConfig,
    SynthRow,
    frame_size,
    generate,
    split_cities,
    write_dataset,
    write_split,
)
from roadwork.synth.scene import (
    DISTRACTOR_KINDS,
    ENVIRONMENTS,
    ROADWORK_KINDS,
    SceneSpec,
    render_frames,
    render_scene,
)
from roadwork.synth.style import paint

ROOT = Path(__file__).resolve().parents[1]
TINY = SynthConfig(
    seed=7,
    rows={"train": 12, "test": 6},
    shards={"train": 2, "test": 1},
    scale=0.1,
    phone_share=0.3,
    positive_rate=0.5,
    video_share=0.6,
    frames_per_video=(2, 4),
    objects_per_image=(1, 3),
    object_scale=0.05,
    distractor_rate=0.6,
    test_cities=2,
    gps_null_rate=0.15,
    bad_rows=3,
    duplicates=2,
    description_rate=(0.9, 0.3),
    informative_text=0.5,
    alteration_rate=(0.7, 0.1),
    jpeg_quality=90,
)
ROADWORK_WORDS = ("cone", "barrier", "road work", "worker", "construction")


@pytest.fixture(scope="module")
def generated() -> dict[str, list[SynthRow]]:
    return generate(TINY, workers=1)


@pytest.fixture(scope="module")
def dataset(generated, tmp_path_factory) -> tuple[Path, dict[str, list[dict]]]:
    root = tmp_path_factory.mktemp("synth")
    for split, rows in generated.items():
        write_split(rows, root / "data", split, TINY.shards[split])
    rows = {}
    for split in TINY.rows:
        files = sorted((root / "data").glob(f"{split}-*.parquet"))
        rows[split] = [r for f in files for r in pq.read_table(f).to_pylist()]
    return root, rows


def _decode(row: dict) -> np.ndarray:
    with Image.open(io.BytesIO(row["image"]["bytes"])) as im:
        im.load()
        return np.asarray(im, dtype=np.float32)


def _small(row: dict) -> np.ndarray:
    """The image at 1/4 size: near-duplicates compare there, as a perceptual hash would."""
    with Image.open(io.BytesIO(row["image"]["bytes"])) as im:
        return np.asarray(im.reduce(4), dtype=np.float32)


def _regular(rows: list[dict], split: str) -> list[dict]:
    return rows[: TINY.rows[split]]  # regular rows come first, the broken rows and copies after them


def test_params_section_parses() -> None:
    cfg = section(SynthConfig, load_params(ROOT / "params.yaml"), "synth")
    assert isinstance(cfg.rows, dict) and set(cfg.rows) == set(cfg.shards)
    assert isinstance(cfg.frames_per_video, tuple) and isinstance(cfg.description_rate[0], float)


def test_bad_config_names_the_field() -> None:
    with pytest.raises(ValueError, match=r"synth\.phone_share"):
        dataclasses.replace(TINY, phone_share=0.5, video_share=0.6)
    with pytest.raises(ValueError, match=r"synth\.shards\.test"):
        dataclasses.replace(TINY, shards={"train": 2, "test": 7})


def test_schema_metadata_and_shard_names(dataset) -> None:
    root, _ = dataset
    names = sorted(p.name for p in (root / "data").iterdir())
    assert names == [
        "test-00000-of-00001.parquet",
        "train-00000-of-00002.parquet",
        "train-00001-of-00002.parquet",
    ]
    assert all(SHARD_RE.match(n) for n in names)
    for name in names:
        schema = pq.read_schema(root / "data" / name)
        assert schema.names == RAW_SCHEMA.names
        assert [f.type for f in schema] == [f.type for f in RAW_SCHEMA]
        assert schema.metadata[b"huggingface"] == HF_METADATA[b"huggingface"]


def test_row_counts_ids_and_paths(dataset) -> None:
    _, rows = dataset
    # bad_rows per split; duplicate 0 lands in test (copied from train), duplicate 1 in train.
    assert {s: len(r) for s, r in rows.items()} == {"train": 12 + 3 + 1, "test": 6 + 3 + 1}
    ids = [r["id"] for rs in rows.values() for r in rs]
    assert len(set(ids)) == len(ids)
    assert all(r["image"]["path"] == f"{r['id']}.jpg" for rs in rows.values() for r in rs)


def test_images_decode_at_their_size_except_the_truncated_one(dataset) -> None:
    _, rows = dataset
    sizes = {frame_size(0.1, False), frame_size(0.1, True)}
    assert sizes == {(192, 108), (404, 302)}
    for split, rs in rows.items():
        broken = []
        for i, r in enumerate(rs):
            try:
                pixels = _decode(r)
            except OSError:
                broken.append(i)
                continue
            assert pixels.shape == (r["height"], r["width"], 3)
            assert (r["width"], r["height"]) in sizes
        assert broken == [TINY.rows[split]], split  # the first bad row: the JPEG cut in half


def test_gps_strings(dataset) -> None:
    _, rows = dataset
    centres = {name: (lat, lon) for name, lat, lon in CITIES}
    for split, rs in rows.items():
        errors = []
        for i, r in enumerate(rs):
            try:
                point = parse_gps(r["gps"])
            except ParseError:
                errors.append(i)
                continue
            assert r["gps"] is None or re.fullmatch(r"\[-?\d+\.\d{8}, -?\d+\.\d{8}\]", r["gps"]), r["gps"]
            if point is not None:  # a few km around the city centre
                lat0, lon0 = centres[r["city_name"]]
                km = math.hypot(point[0] - lat0, (point[1] - lon0) * math.cos(math.radians(lat0))) * 111.32
                assert km < 20.0, (r["city_name"], r["gps"])
        assert errors == [TINY.rows[split] + 2], split  # the third bad row: GPS out of range
    assert any(r["gps"] is None for rs in rows.values() for r in rs)


def test_tag_lists_parse_and_nulls_are_real(dataset) -> None:
    _, rows = dataset
    allrows = [r for rs in rows.values() for r in rs]
    empties = set()
    for r in allrows:
        for col in ("scene_level_tags.weather", "scene_level_tags.travel_alteration"):
            items = parse_list(r[col])
            if not items:
                empties.add(r[col])
            assert all(isinstance(t, str) and t for t in items)
        assert r["scene_level_tags.daytime"] in ("Light", "Dusk", "Dark")
        assert r["scene_level_tags.scene_environment"] in ENVIRONMENTS
        assert r["flickr_url"] is None and r["coco_url"] is None
        text = r["scene_description"]
        assert text is None or (1 <= len(text) <= 385 and text == text.strip())
        video = r["video_info.vid_id"] is not None
        assert (r["video_info.frame_id"] is not None) == video
        assert isinstance(r["video_info.seq_id"], int) and isinstance(r["date_captured"], int)
    assert empties == {"[]", "['None']"}
    assert any(r["scene_description"] is None for r in allrows)
    assert {r["city_name"] for r in allrows} <= {c[0] for c in CITIES}


def test_labels_and_descriptions(dataset) -> None:
    _, rows = dataset
    for split, rs in rows.items():
        regular = _regular(rs, split)
        assert {r["label"] for r in regular} == {0, 1}, split
    # the second bad row: an invalid label, null in one split and 2 in the next
    assert [rows[s][TINY.rows[s] + 1]["label"] for s in TINY.rows] == [None, 2]
    for r in (r for rs in rows.values() for r in rs):
        if r["label"] == 0 and r["scene_description"]:
            text = r["scene_description"].lower()
            assert not any(w in text for w in ROADWORK_WORDS), text


def test_informative_descriptions_name_what_is_drawn(generated) -> None:
    names = {
        "cone": "traffic cones",
        "barrier": "barrier",
        "sign": "road work sign",
        "worker": "worker",
        "vehicle": "construction vehicle",
    }
    informative = 0
    for r in (r for split, rows in generated.items() for r in rows[: TINY.rows[split]]):
        text = (r.row["scene_description"] or "").lower()
        drawn = {o.kind for o in r.objects}
        assert bool(drawn) == (r.row["label"] == 1)
        named = {kind for kind, word in names.items() if word in text}
        if named:
            informative += 1
            assert named == drawn, (text, drawn)
    assert informative > 0


def test_video_frames_share_label_and_are_near_duplicates(dataset) -> None:
    _, rows = dataset
    videos: dict[str, list[dict]] = {}
    for split, rs in rows.items():
        for r in _regular(rs, split):
            if r["video_info.vid_id"] is not None:
                videos.setdefault(r["video_info.vid_id"], []).append(r)
    multi = [v for v in videos.values() if len(v) >= 2]
    assert len(multi) >= 2
    within, between = [], []
    for frames in multi:
        assert len({f["label"] for f in frames}) == 1
        assert [f["video_info.seq_id"] for f in frames] == list(range(len(frames)))
        within.append(np.abs(_small(frames[0]) - _small(frames[-1])).mean())
    for a, b in itertools.pairwise(multi):
        between.append(np.abs(_small(a[0]) - _small(b[0])).mean())
    assert max(within) < 0.4 * min(between), (within, between)


def test_test_split_cities_and_duplicates(dataset) -> None:
    _, rows = dataset
    digest = {s: [hashlib.sha256(r["image"]["bytes"]).hexdigest() for r in rs] for s, rs in rows.items()}
    allowed = {c[0] for c in split_cities(TINY, "test")}
    assert len(allowed) == TINY.test_cities
    assert {r["city_name"] for r in _regular(rows["test"], "test")} <= allowed
    assert len({r["city_name"] for r in rows["train"]}) > TINY.test_cities
    copies = [(s, i) for s, hs in digest.items() for i, h in enumerate(hs) if hs.index(h) != i]
    crossing = [i for i, h in enumerate(digest["test"]) if h in digest["train"]]
    assert len(copies) + len(crossing) == TINY.duplicates
    assert crossing == [len(rows["test"]) - 1]


def test_same_params_give_identical_bytes_with_any_worker_count(dataset, tmp_path) -> None:
    root, _ = dataset
    write_dataset(TINY, tmp_path, workers=2)
    for f in sorted((root / "data").iterdir()):
        assert (tmp_path / "data" / f.name).read_bytes() == f.read_bytes(), f.name


def test_growing_rows_keeps_the_first_units(tmp_path) -> None:
    small = dataclasses.replace(
        TINY, rows={"train": 4, "test": 2}, shards={"train": 1, "test": 1}, bad_rows=0, duplicates=0
    )
    big = dataclasses.replace(small, rows={"train": 12, "test": 2})
    a = pq.read_table(write_dataset(small, tmp_path / "a")["train"][0]).to_pylist()
    b = pq.read_table(write_dataset(big, tmp_path / "b")["train"][0]).to_pylist()
    # all but the last unit (a video may be cut short by the row count) are identical
    last = a[-1]["video_info.vid_id"]
    keep = [r for r in a if r["video_info.vid_id"] is None or r["video_info.vid_id"] != last][:-1]
    assert keep and [r["image"]["bytes"] for r in keep] == [r["image"]["bytes"] for r in b[: len(keep)]]


def _spec(**kw) -> SceneSpec:
    base = {"width": 480, "height": 270, "weather": "sunny", "daytime": "Light", "environment": "Urban"}
    return SceneSpec(**{**base, **kw})


def test_daytime_and_weather_change_pixels() -> None:
    def render(**kw) -> np.ndarray:
        return render_scene(_spec(**kw), np.random.default_rng(3)).image.astype(np.float32)

    light, dusk, dark = (render(daytime=d) for d in ("Light", "Dusk", "Dark"))
    assert dark.mean() < 0.5 * light.mean()
    assert dark.mean() < dusk.mean() < light.mean()
    assert dusk[..., 0].mean() / dusk[..., 2].mean() > light[..., 0].mean() / light[..., 2].mean()  # warm
    fog = render(weather="fog")
    assert fog.std() < 0.7 * light.std()  # haze washes out contrast
    snow = render(weather="snow")
    assert snow.mean() > light.mean()


def test_objects_are_small_visible_and_reported() -> None:
    spec = _spec(objects=("cone", "barrier", "sign", "worker", "vehicle"), object_scale=0.05)
    frame = render_scene(spec, np.random.default_rng(5))
    kinds = {o.kind for o in frame.objects}
    assert kinds == set(ROADWORK_KINDS) and frame.distractors == []
    for o in frame.objects:
        x0, y0, x1, y1 = o.box
        assert 0 <= x0 < x1 <= spec.width and 0 <= y0 < y1 <= spec.height
        assert (y1 - y0) < 0.15 * spec.height  # small: a tile sees it much better than the whole image
        if o.kind == "cone":
            patch = frame.image[y0:y1, x0:x1].reshape(-1, 3).astype(int)
            orange = (patch[:, 0] > 190) & (patch[:, 1] > 60) & (patch[:, 1] < 170) & (patch[:, 2] < 80)
            assert orange.any()
    negative = render_scene(_spec(distractors=DISTRACTOR_KINDS), np.random.default_rng(5))
    assert negative.objects == [] and {d.kind for d in negative.distractors} == set(DISTRACTOR_KINDS)


def test_frames_of_a_video_share_objects_with_a_small_shift() -> None:
    frames = render_frames(_spec(objects=("barrier",)), np.random.default_rng(9), 4)
    boxes = [f.objects[0].box for f in frames]
    assert all(abs(a - b) <= 10 for box in boxes for a, b in zip(box, boxes[0], strict=True))
    assert np.abs(frames[0].image.astype(int) - frames[-1].image.astype(int)).mean() < 20


def test_stage_rewrites_its_output_and_refuses_foreign_folders(tmp_path, monkeypatch) -> None:
    from stages import synth as stage

    params = load_params(ROOT / "params.yaml")
    params["paths"]["synthetic"] = "out/synthetic"
    params["synth"] = {
        **json.loads(json.dumps(dataclasses.asdict(TINY))),
        "rows": {"train": 4, "test": 2},
        "shards": {"train": 1, "test": 1},
    }
    write_params(tmp_path, params)
    monkeypatch.chdir(tmp_path)
    stale = tmp_path / "out/synthetic/data/train-00000-of-00009.parquet"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    stage.main()
    out = tmp_path / "out/synthetic"
    assert sorted(p.name for p in (out / "data").iterdir()) == [
        "test-00000-of-00001.parquet",
        "train-00000-of-00001.parquet",
    ]
    saved = json.loads((out / "synth_config.json").read_text())
    assert saved["rows"] == {"train": 4, "test": 2} and saved["frames_per_video"] == [2, 4]
    (out / "notes.txt").write_text("not ours")
    with pytest.raises(FileExistsError, match=r"notes\.txt"):
        stage.main()


def _noisy_scene(h: int, w: int) -> np.ndarray:
    """Flat regions, two objects with sharp edges, sensor noise (std 8)."""
    img = np.zeros((h, w, 3), np.uint8)
    img[:] = (90, 110, 130)
    img[h // 3 : h // 2, w // 3 : w // 3 + w // 16] = (255, 120, 0)
    img[2 * h // 3 :, w // 2 :] = (240, 240, 240)
    noise = np.random.default_rng(0).normal(0, 8, img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def test_paint_of_a_video_frame_is_the_plain_bilateral_filter():
    import cv2

    img = _noisy_scene(270, 480)
    sigma = 20 + 60 * 0.7
    want = cv2.bilateralFilter(img, d=3, sigmaColor=sigma, sigmaSpace=sigma / 8)
    assert np.array_equal(paint(img, 0.7), want)


def test_paint_of_a_tall_frame_matches_the_full_size_filter(monkeypatch):
    """A phone photo is painted at half size; seen at a challenge's 224 px it is the same picture."""
    import cv2

    import roadwork.synth.style as style

    img = _noisy_scene(756, 1008)
    fast = paint(img, 0.7)
    monkeypatch.setattr(style, "PAINT_HEIGHT", 10_000)
    full = paint(img, 0.7)
    assert fast.shape == img.shape and fast.dtype == np.uint8
    assert not np.array_equal(fast, full)  # the two paths differ ...
    small = [cv2.resize(x, (224, 168), interpolation=cv2.INTER_AREA).astype(float) for x in (fast, full)]
    assert np.abs(small[0] - small[1]).mean() < 1.0  # ... by less than a grey level at 224 px
    flat = fast[:200, :200].std(axis=(0, 1))
    assert (flat < 2.0).all()  # and the sensor noise (std 8) is painted flat
