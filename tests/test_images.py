"""Reading image bytes out of parquet shards and decoding them to RGB at reduced scale."""

from __future__ import annotations

import io
import math
import pickle
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from roadwork.data.images import ImageDecodeError, ShardReader, decode, pixel_view
from roadwork.data.schema import IMAGE_STRUCT


def _encode(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _noisy(width: int, height: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 200, width, dtype=np.float32)[None, :, None] + rng.normal(0, 10, (height, width, 3))
    return np.clip(base, 0, 255).astype(np.uint8)


# --- decode --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("asked", "expected"),
    [(1.0, 1.0), (0.9, 1.0), (0.5, 0.5), (0.26, 0.5), (0.25, 0.25), (0.2, 0.25), (0.13, 0.25), (0.125, 0.125),
     (0.01, 0.125)],
)  # fmt: skip
def test_draft_decode_scale(asked: float, expected: float) -> None:
    data = _encode(Image.fromarray(_noisy(640, 480)), "JPEG", quality=90)
    image, scale = decode(data, min_side_scale=asked)
    assert scale == expected
    assert image.mode == "RGB" and image.size == (640 * expected, 480 * expected)


@pytest.mark.parametrize("asked", [0.9, 0.5, 0.3, 0.2, 0.126, 0.05])
def test_draft_never_below_the_needed_size(asked: float) -> None:
    width, height = 803, 469  # sizes that do not divide by 8
    data = _encode(Image.fromarray(_noisy(width, height)), "JPEG", quality=90)
    image, scale = decode(data, min_side_scale=asked)
    assert scale >= asked or scale == 0.125
    needed = min(asked, scale)
    assert image.width >= math.ceil(width * needed) and image.height >= math.ceil(height * needed)
    assert image.size == (math.ceil(width * scale), math.ceil(height * scale))


def test_draft_content_matches_full_decode_downscaled() -> None:
    arr = np.repeat(np.repeat(_noisy(80, 60, seed=1), 8, axis=0), 8, axis=1)  # 640x480, flat 8x8 blocks
    data = _encode(Image.fromarray(arr), "JPEG", quality=95)
    small, scale = decode(data, min_side_scale=0.125)
    assert scale == 0.125
    assert np.abs(np.asarray(small).astype(int) - _noisy(80, 60, seed=1)).mean() < 4


@pytest.mark.parametrize("asked", [1.0, 0.5])
def test_exif_orientation_6_rotates(asked: float) -> None:
    stored = np.zeros((64, 96, 3), dtype=np.uint8)
    stored[:16, :16] = (255, 0, 0)  # red block at the stored top-left
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _encode(Image.fromarray(stored), "JPEG", quality=95, exif=exif.tobytes())
    image, scale = decode(data, min_side_scale=asked)
    assert scale == asked and image.size == (64 * asked, 96 * asked)  # displayed: rotated to portrait
    shown = np.asarray(image).astype(int)
    expected = np.rot90(stored, k=-1)[:: int(1 / asked), :: int(1 / asked)]  # 90 degrees clockwise
    assert np.abs(shown - expected).mean() < 6
    assert shown[2, -3, 0] > 200 and shown[-3, 2, 0] < 50  # the block is now at the top-right


def test_grayscale_jpeg_to_rgb() -> None:
    grey = (np.arange(48 * 64).reshape(48, 64) % 256).astype(np.uint8)
    image, scale = decode(_encode(Image.fromarray(grey, mode="L"), "JPEG", quality=95))
    arr = np.asarray(image)
    assert image.mode == "RGB" and scale == 1.0 and arr.shape == (48, 64, 3)
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()


def test_cmyk_jpeg_to_rgb() -> None:
    cmyk = Image.new("CMYK", (40, 30), (255, 0, 0, 0))  # pure cyan
    image, _ = decode(_encode(cmyk, "JPEG", quality=95), min_side_scale=0.5)
    assert image.mode == "RGB" and image.size == (20, 15)
    assert np.abs(np.asarray(image).astype(int) - (0, 255, 255)).max() <= 8


def test_png_rgba_and_palette_with_transparency_to_rgb() -> None:
    rgba = Image.new("RGBA", (30, 20), (10, 200, 30, 128))
    image, scale = decode(_encode(rgba, "PNG"), min_side_scale=0.25)
    assert scale == 1.0 and image.mode == "RGB"  # no draft outside JPEG
    assert np.asarray(image)[0, 0].tolist() == [10, 200, 30]
    palette = Image.new("P", (16, 8), 1)
    palette.putpalette([0, 0, 0, 250, 100, 0] + [0] * 762)
    data = _encode(palette, "PNG", transparency=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        image, _ = decode(data)
    assert image.mode == "RGB" and np.asarray(image)[3, 3].tolist() == [250, 100, 0]


def test_sixteen_bit_png_is_scaled_not_clipped() -> None:
    values = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    image, _ = decode(_encode(Image.fromarray(values), "PNG"))
    assert np.asarray(image)[0, :, 0].tolist() == [0, 100, 255]


def test_mpo_first_frame() -> None:
    first = Image.new("RGB", (64, 48), (200, 30, 30))
    second = Image.new("RGB", (64, 48), (30, 30, 200))
    data = _encode(first, "MPO", save_all=True, append_images=[second], quality=95)
    assert Image.open(io.BytesIO(data)).format == "MPO"
    image, scale = decode(data, min_side_scale=0.5)
    assert scale == 0.5 and image.size == (32, 24)
    assert np.abs(np.asarray(image).astype(int) - (200, 30, 30)).max() <= 6


def test_undecodable_bytes() -> None:
    good = _encode(Image.fromarray(_noisy(64, 64)), "JPEG")
    with pytest.raises(ImageDecodeError, match="does not decode"):
        decode(b"not an image at all")
    with pytest.raises(ImageDecodeError, match=f"image of {len(good) // 3} bytes"):
        decode(good[: len(good) // 3])
    with pytest.raises(ValueError, match="min_side_scale"):
        decode(good, min_side_scale=0.0)


# --- ShardReader ---------------------------------------------------------------------------------


@pytest.fixture
def shard_root(tmp_path: Path) -> tuple[Path, list[bytes]]:
    rng = np.random.default_rng(0)
    payloads = [rng.integers(0, 256, int(rng.integers(1, 500)), dtype=np.uint8).tobytes() for _ in range(10)]
    images = pa.array([{"bytes": b, "path": f"{i}.jpg"} for i, b in enumerate(payloads)], type=IMAGE_STRUCT)
    table = pa.table({"image": images, "id": pa.array(range(10), type=pa.int64())})
    (tmp_path / "data").mkdir()
    pq.write_table(table, tmp_path / "data" / "train-00000-of-00001.parquet", row_group_size=3)
    assert pq.ParquetFile(tmp_path / "data" / "train-00000-of-00001.parquet").metadata.num_row_groups == 4
    return tmp_path, payloads


SHARD = "data/train-00000-of-00001.parquet"


def test_shard_reader_reads_every_row_in_any_order(shard_root: tuple[Path, list[bytes]]) -> None:
    root, payloads = shard_root
    reader = ShardReader(root, max_row_groups=2)
    assert reader.num_rows(SHARD) == 10
    for row in [9, 0, 4, 3, 5, 2, 8, 1, 7, 6, 0, np.int64(9)]:
        assert reader.read(SHARD, row) == payloads[int(row)]
        assert len(reader._cache) <= 2
    clone = pickle.loads(pickle.dumps(reader))  # worker processes get a fresh, lazily opened reader
    assert clone._files == {} and clone.read(SHARD, 7) == payloads[7]


def test_shard_reader_errors(shard_root: tuple[Path, list[bytes]]) -> None:
    root, _ = shard_root
    reader = ShardReader(root)
    with pytest.raises(IndexError, match=rf"shard '{SHARD}': row 10 out of range \(shard has 10 rows\)"):
        reader.read(SHARD, 10)
    with pytest.raises(IndexError, match="row -1 out of range"):
        reader.read(SHARD, -1)
    with pytest.raises(FileNotFoundError, match=r"shard 'data/missing\.parquet'"):
        reader.read("data/missing.parquet", 0)
    with pytest.raises(ValueError, match="relative to"):
        reader.read("../outside.parquet", 0)


def test_shard_reader_null_bytes_and_plain_binary(tmp_path: Path) -> None:
    images = pa.array([{"bytes": b"abc", "path": None}, {"bytes": None, "path": "x.jpg"}], type=IMAGE_STRUCT)
    pq.write_table(pa.table({"image": images}), tmp_path / "s.parquet")
    pq.write_table(pa.table({"image": pa.array([b"xyz", b"uvw"])}), tmp_path / "b.parquet")
    reader = ShardReader(tmp_path)
    assert reader.read("s.parquet", 0) == b"abc"
    with pytest.raises(ValueError, match=r"shard 's\.parquet', row 1: field 'image' has no bytes"):
        reader.read("s.parquet", 1)
    assert reader.read("b.parquet", 1) == b"uvw"


@pytest.mark.parametrize("size", [(640, 480), (4032, 3024)])  # one memory block, and several (copied)
def test_pixel_view_holds_the_rgb_pixels(size):
    rgb = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(rgb)
    view = pixel_view(image)
    assert view.shape == (size[1], size[0], 4) and view.dtype == np.uint8
    np.testing.assert_array_equal(view[..., :3], rgb)
    with pytest.raises(ValueError, match="expected an RGB image, got mode L"):
        pixel_view(image.convert("L"))
