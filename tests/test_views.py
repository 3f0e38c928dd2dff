"""View plan geometry, plan files, the `views` stage, and cutting views out of decoded images."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from roadwork.config import load_params, write_params
from roadwork.data.schema import INDEX_SCHEMA
from roadwork.views.crops import content_box, cut_views, load_views, required_scale
from roadwork.views.plan import (
    ViewsConfig,
    boxes_by_image,
    build_plan,
    n_views,
    plan_fingerprint,
    read_plan,
    rule_fingerprint,
    view_boxes,
    view_names,
    write_plan,
)

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ViewsConfig(grid=3, overlap=0.25)
SIZES = [(1920, 1080), (4032, 3024), (3024, 4032), (224, 224), (17, 9), (1, 1)]


def _coverage(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    count = np.zeros((height, width), dtype=np.int32)
    for x0, y0, x1, y1 in boxes:
        count[y0:y1, x0:x1] += 1
    return count


def test_names_and_count() -> None:
    assert n_views(CONFIG) == 12
    names = view_names(CONFIG)
    assert names[0] == "global" and names[1] == "tile_0_0" and names[3] == "tile_0_2"
    assert names[9] == "tile_2_2" and names[-2:] == ["centre", "right"]
    assert len(names) == len(set(names)) == 12
    four = view_names(ViewsConfig(grid=4, overlap=0.0))
    assert len(four) == len(set(four)) == n_views(ViewsConfig(grid=4, overlap=0.0)) == 19


@pytest.mark.parametrize(("width", "height"), SIZES)
@pytest.mark.parametrize("config", [CONFIG, ViewsConfig(2, 0.0), ViewsConfig(4, 0.5), ViewsConfig(1, 0.3)])
def test_boxes_valid_and_tiles_cover_every_pixel(width: int, height: int, config: ViewsConfig) -> None:
    boxes = view_boxes(width, height, config)
    assert boxes.dtype == np.int32 and boxes.shape == (n_views(config), 4)
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
    assert (boxes[:, 2:] > boxes[:, :2]).all()
    assert boxes[0].tolist() == [0, 0, width, height]
    tiles = boxes[1 : 1 + config.grid**2]
    assert _coverage(tiles, width, height).min() >= 1
    # Row-major grid: the last tile of each row / column ends exactly at the image edge.
    grid = tiles.reshape(config.grid, config.grid, 4)
    assert (grid[:, -1, 2] == width).all() and (grid[-1, :, 3] == height).all()
    assert (grid[:, 0, 0] == 0).all() and (grid[0, :, 1] == 0).all()


@pytest.mark.parametrize(("width", "height"), [(1920, 1080), (4032, 3024), (3024, 4032), (224, 224)])
def test_tile_size_and_overlap_match_params(width: int, height: int) -> None:
    grid = view_boxes(width, height, CONFIG)[1:10].reshape(3, 3, 4)
    tile_w, tile_h = width / 2.5, height / 2.5  # 3 - 2 * 0.25 tiles fit across
    assert np.abs(grid[..., 2] - grid[..., 0] - tile_w).max() <= 1
    assert np.abs(grid[..., 3] - grid[..., 1] - tile_h).max() <= 1
    overlap_x = grid[:, :-1, 2] - grid[:, 1:, 0]
    overlap_y = grid[:-1, :, 3] - grid[1:, :, 1]
    assert np.abs(overlap_x - 0.25 * tile_w).max() <= 1
    assert np.abs(overlap_y - 0.25 * tile_h).max() <= 1


def test_centre_and_right_squares() -> None:
    boxes = view_boxes(1920, 1080, CONFIG)
    assert boxes[10].tolist() == [420, 0, 1500, 1080]
    assert boxes[11].tolist() == [840, 0, 1920, 1080]
    portrait = view_boxes(3024, 4032, CONFIG)
    assert portrait[10].tolist() == [0, 504, 3024, 3528]
    assert portrait[11].tolist() == [0, 504, 3024, 3528]
    odd = view_boxes(17, 9, CONFIG)
    assert odd[10].tolist() == [4, 0, 13, 9] and odd[11].tolist() == [8, 0, 17, 9]


@pytest.mark.parametrize(("width", "height"), [(0, 10), (10, 0), (-3, 5), (2.5, 4), (True, 3)])
def test_view_boxes_rejects_bad_sizes(width: object, height: object) -> None:
    with pytest.raises(ValueError, match="must be an int >= 1"):
        view_boxes(width, height, CONFIG)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("grid", "overlap", "field"), [(0, 0.25, "grid"), (3, 1.0, "overlap"), (3, -0.1, "overlap")]
)
def test_config_rejects_bad_values(grid: int, overlap: float, field: str) -> None:
    with pytest.raises(ValueError, match=f"views.{field}"):
        ViewsConfig(grid=grid, overlap=overlap)


def _index(sizes: list[tuple[int, int]]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "image_id": [f"img{i:03d}" for i in range(len(sizes))],
            "width": pl.Series([w for w, _ in sizes], dtype=pl.Int32),
            "height": pl.Series([h for _, h in sizes], dtype=pl.Int32),
        }
    )


def test_build_plan_rows_match_view_boxes() -> None:
    sizes = [(1920, 1080), (4032, 3024), (1920, 1080), (3024, 4032), (17, 9)]
    plan = build_plan(_index(sizes), CONFIG)
    assert plan.schema == {
        "image_id": pl.String, "view": pl.Int8, "name": pl.String,
        "x0": pl.Int32, "y0": pl.Int32, "x1": pl.Int32, "y1": pl.Int32,
    }  # fmt: skip
    assert len(plan) == 12 * len(sizes)
    assert plan["image_id"].unique(maintain_order=True).to_list() == [f"img{i:03d}" for i in range(5)]
    by_image = boxes_by_image(plan)
    for i, (w, h) in enumerate(sizes):
        np.testing.assert_array_equal(by_image[f"img{i:03d}"], view_boxes(w, h, CONFIG))
    assert plan.filter(pl.col("image_id") == "img002")["name"].to_list() == view_names(CONFIG)


def test_plan_round_trip_and_fingerprint(tmp_path: Path) -> None:
    plan = build_plan(_index([(1920, 1080), (4032, 3024)]), CONFIG)
    meta = write_plan(plan, tmp_path / "views", CONFIG)
    back, meta_back = read_plan(tmp_path / "views")
    assert back.equals(plan)
    assert meta_back == json.loads(json.dumps(meta))
    assert meta_back["fingerprint"] == plan_fingerprint(plan) and meta_back["n_views"] == 12
    assert meta_back["names"] == view_names(CONFIG) and meta_back["config"] == dataclasses.asdict(CONFIG)
    moved = plan.with_columns(pl.when(pl.int_range(pl.len()) == 5).then(pl.col("x1") - 1).otherwise("x1"))
    assert plan_fingerprint(moved) != plan_fingerprint(plan)
    other_grid = build_plan(_index([(1920, 1080), (4032, 3024)]), ViewsConfig(3, 0.3))
    assert plan_fingerprint(other_grid) != plan_fingerprint(plan)
    # A plan.parquet edited behind plan.json's back is refused.
    moved.write_parquet(tmp_path / "views" / "plan.parquet")
    with pytest.raises(ValueError, match="does not match"):
        read_plan(tmp_path / "views")


def test_build_plan_errors_name_the_row() -> None:
    bad = _index([(1920, 1080), (0, 1080)])
    with pytest.raises(ValueError, match=r"row 1 \(image_id 'img001'\) has size 0x1080"):
        build_plan(bad, CONFIG)
    dup = _index([(10, 10), (10, 10)]).with_columns(pl.lit("same").alias("image_id"))
    with pytest.raises(ValueError, match="'same' appears more than once"):
        build_plan(dup, CONFIG)
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['height'\]"):
        build_plan(_index([(5, 5)]).drop("height"), CONFIG)
    nulls = _index([(5, 5), (5, 5)]).with_columns(pl.Series("width", [5, None], dtype=pl.Int32))
    with pytest.raises(ValueError, match="row 1 has a null width"):
        build_plan(nulls, CONFIG)


def test_boxes_by_image_rejects_incomplete_plan() -> None:
    plan = build_plan(_index([(64, 48), (32, 32)]), CONFIG)
    with pytest.raises(ValueError, match="img001"):
        boxes_by_image(plan.filter(~((pl.col("image_id") == "img001") & (pl.col("view") == 4))))


def test_stage_writes_plan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from stages import views as stage

    write_params(tmp_path, load_params(ROOT / "params.yaml"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "prepared").mkdir(parents=True)
    sizes = _index([(1920, 1080), (4032, 3024), (3024, 4032)]).to_dicts()
    rows = [{name: None for name in INDEX_SCHEMA.names} | row for row in sizes]
    pq.write_table(pa.Table.from_pylist(rows, schema=INDEX_SCHEMA), tmp_path / "data/prepared/index.parquet")
    stage.main()
    plan, meta = read_plan(tmp_path / "data" / "views")
    assert meta["images"] == 3 and len(plan) == 36
    saved = json.loads((tmp_path / "data/views/config.json").read_text())
    assert saved == {"grid": 3, "overlap": 0.25, "small_side": 256, "small_rule": "half", "trim_bands": True}


# --- cutting views -------------------------------------------------------------------------------


def _gradient(width: int, height: int) -> np.ndarray:
    """A smooth image whose pixel values say where they are (R: x, G: y, B: x + y)."""
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    return np.stack(np.broadcast_arrays(x, y, (x + y) / 2), axis=-1).astype(np.uint8)


def _reference(arr: np.ndarray, boxes: np.ndarray, side: int) -> np.ndarray:
    """Crop at full resolution, then resize: what the views must approximate."""
    image = Image.fromarray(arr)
    return np.stack(
        [np.asarray(image.crop(tuple(b)).resize((side, side), Image.Resampling.BOX)) for b in boxes]
    )


def test_required_scale() -> None:
    boxes = view_boxes(1920, 1080, CONFIG)  # the smallest box side is a tile's height, 432
    assert required_scale(boxes, 112) == pytest.approx(112 / 432)
    assert required_scale(boxes, 512) == 1.0
    assert required_scale(np.array([[0, 0, 100, 50]]), 25) == 0.5
    with pytest.raises(ValueError, match="view 1 box"):
        required_scale(np.array([[0, 0, 10, 10], [5, 5, 5, 9]]), 4)


def test_cut_views_matches_full_resolution_reference() -> None:
    arr = _gradient(480, 270)
    boxes = view_boxes(480, 270, CONFIG)
    views = cut_views(Image.fromarray(arr), boxes, 1.0, 48)
    assert views.shape == (12, 48, 48, 3) and views.dtype == np.uint8
    assert np.abs(views.astype(int) - _reference(arr, boxes, 48)).max() <= 2
    # A decoded image at half scale: the same boxes, multiplied by the scale, cut the same content.
    half = Image.fromarray(arr).resize((240, 135), Image.Resampling.BOX)
    views_half = cut_views(half, boxes, 0.5, 48)
    assert np.abs(views_half.astype(int) - _reference(arr, boxes, 48)).max() <= 3


def test_cut_views_finds_a_square_in_its_tile() -> None:
    arr = np.zeros((300, 400, 3), dtype=np.uint8)
    arr[250:290, 360:395] = (255, 0, 0)  # bottom-right corner: only tile_2_2 (and global/right) see it
    views = cut_views(Image.fromarray(arr), view_boxes(400, 300, CONFIG), 1.0, 32)
    red = views[..., 0].astype(int).sum(axis=(1, 2))
    names = view_names(CONFIG)
    assert {names[i] for i in np.flatnonzero(red > 0)} == {"global", "tile_2_2", "right"}
    # Inside tile_2_2 (x 240..400, y 180..300) the square sits at x 120..155, y 70..110 of 160x120.
    tile = views[9, ..., 0]
    assert tile[int(90 / 120 * 32), int(137 / 160 * 32)] == 255 and tile[5, 5] == 0


def test_cut_views_antialiases_fine_stripes() -> None:
    arr = np.zeros((800, 800, 3), dtype=np.uint8)
    arr[:, ::2] = 255
    views = cut_views(Image.fromarray(arr), np.array([[0, 0, 800, 800], [3, 7, 720, 650]]), 1.0, 56)
    assert np.abs(views.astype(float) - 127.5).max() < 10  # aliasing would give stripes of 0 / 255


def test_cut_views_refuses_boxes_outside_the_image() -> None:
    with pytest.raises(ValueError, match=r"view 0 box .* falls outside the decoded 50x40 image"):
        cut_views(Image.new("RGB", (50, 40)), np.array([[0, 0, 100, 80]]), 1.0, 16)


def _jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def test_load_views_with_draft_decode_matches_reference() -> None:
    arr = _gradient(1600, 1200)
    boxes = view_boxes(1600, 1200, CONFIG)  # smallest side 480: side 56 needs 0.117 -> 1/8 decode
    views = load_views(_jpeg(arr), boxes, 56, size=(1600, 1200))
    assert views.shape == (12, 56, 56, 3)
    assert np.abs(views.astype(int) - _reference(arr, boxes, 56)).mean() < 1.0
    assert np.abs(views.astype(int) - _reference(arr, boxes, 56)).max() <= 4
    with pytest.raises(ValueError, match="expected 400x300 for a planned size of 3200x2400"):
        load_views(_jpeg(arr), view_boxes(3200, 2400, CONFIG), 56, size=(3200, 2400))


def test_cut_views_is_pils_antialiased_bilinear_of_the_crop() -> None:
    """On noise (the hardest case), up- and downsampled views agree with PIL's crop + BILINEAR resize
    within one grey level: the same filter, widened with the reduction factor."""
    arr = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    image = Image.fromarray(arr)
    boxes = np.array([[0, 0, 400, 300], [50, 40, 130, 100], [10, 10, 390, 290], [100, 0, 300, 300]])
    views = cut_views(image, boxes, 1.0, 96).astype(int)
    reference = [image.crop(tuple(b)).resize((96, 96), Image.Resampling.BILINEAR) for b in boxes.tolist()]
    assert np.abs(views - np.stack([np.asarray(r) for r in reference])).max() <= 1


def test_small_images_follow_the_small_rule():
    small = ViewsConfig(grid=3, overlap=0.25, small_side=256, small_rule="global")
    boxes = view_boxes(224, 224, small)
    assert boxes.shape == (12, 4) and (boxes == [0, 0, 224, 224]).all()  # every view the whole image
    np.testing.assert_array_equal(view_boxes(480, 270, small), view_boxes(480, 270, CONFIG))  # not small
    tiles = ViewsConfig(grid=3, overlap=0.25, small_side=256, small_rule="tiles")
    np.testing.assert_array_equal(view_boxes(224, 224, tiles), view_boxes(224, 224, CONFIG))
    assert rule_fingerprint(small) != rule_fingerprint(tiles) == rule_fingerprint(CONFIG)
    half = ViewsConfig(grid=3, overlap=0.25, small_side=256, small_rule="half")
    tiles_of_half = view_boxes(224, 224, half)[1:10]  # 3x3 tiles of 112 px at a 56 px stride
    np.testing.assert_array_equal(tiles_of_half[:3, 0], [0, 56, 112])
    assert (tiles_of_half[:, 2:] - tiles_of_half[:, :2] == 112).all()
    same = [0, 10, 11]  # global, centre, right: as in any rule
    np.testing.assert_array_equal(view_boxes(224, 224, half)[same], view_boxes(224, 224, CONFIG)[same])
    assert rule_fingerprint(half) not in (rule_fingerprint(small), rule_fingerprint(tiles))
    with pytest.raises(ValueError, match="small_rule='crop'"):
        ViewsConfig(grid=3, overlap=0.25, small_side=256, small_rule="crop")


def _as_jpeg(image: Image.Image, quality: int = 75) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def test_content_box_finds_letterbox_bands_and_only_those():
    from roadwork.views.protocols import challenge, letterbox_geometry

    rng = np.random.default_rng(0)
    scene = Image.fromarray(rng.integers(40, 220, (270, 480, 3), dtype=np.uint8))
    boxed = np.asarray(Image.open(io.BytesIO(_as_jpeg(challenge(scene, 0, rng, "letterbox")))))
    _, new_h, _, top = letterbox_geometry(480, 270)
    x0, y0, x1, y1 = content_box(boxed)
    assert (x0, x1) == (0, 224) and abs(y0 - top) <= 1 and abs(y1 - (top + new_h)) <= 1  # JPEG ringing
    turned = np.asarray(challenge(scene, 1, np.random.default_rng(1), "letterbox"))
    x0, y0, x1, y1 = content_box(turned)
    assert 0 < y0 < top and top + new_h < y1 < 224  # a rotated frame reaches into the bands
    night = np.asarray(scene).copy()
    night[:60] = 0  # a black sky on top, a lit road below: not a letterbox
    assert content_box(night) == (0, 0, 480, 270)
    tall = np.zeros((224, 224, 3), np.uint8)
    tall[:, 28:196] = 120  # a portrait frame: bands left and right
    assert content_box(tall) == (28, 0, 196, 224)


def test_served_views_of_a_letterbox_cut_inside_its_bands_only_when_asked():
    from roadwork.views.crops import served_views
    from roadwork.views.protocols import challenge

    scene = Image.fromarray(np.random.default_rng(2).integers(40, 220, (270, 480, 3), dtype=np.uint8))
    data = _as_jpeg(challenge(scene, 0, np.random.default_rng(0), "letterbox"))
    config = ViewsConfig(grid=3, overlap=0.25, small_side=256, small_rule="half", trim_bands=True)
    trimmed = served_views(data, views=config, side=32)
    plain = served_views(data, views=dataclasses.replace(config, trim_bands=False), side=32)
    assert trimmed.shape == plain.shape == (12, 32, 32, 3)
    assert plain[0].min(axis=2)[:4].max() < 30 and trimmed[0].min(axis=2)[:4].max() > 30  # no band left
    full = _as_jpeg(scene)  # a full-size image is never trimmed: its boxes come from its size alone
    np.testing.assert_array_equal(
        served_views(full, views=config, side=32), load_views(full, view_boxes(480, 270, config), 32)
    )
    assert rule_fingerprint(config) != rule_fingerprint(dataclasses.replace(config, trim_bands=False))
