"""`roadwork predict` without a trained pipeline: input order, skipped files, broken links, the pixel limit.

The CLI runs as it does for a user (`cli.main`), over the real `Predictor` code (reading, decoding and
cutting views, per-item errors, the parquet path through ingest) with one stand-in: `StandInPredictor`
replaces the backbone and the heads by the mean grey level of the views, so the tests run in seconds.
The same path with a trained pipeline is tested end to end in tests/test_pipeline.py.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import polars as pl
import pytest
from PIL import ImageFile

from roadwork import cli
from roadwork.data import images
from roadwork.ensemble.calibrate import IDENTITY, Calibration
from roadwork.serve.predictor import Predictor, Route
from roadwork.views.plan import ViewsConfig
from tests.natix_fixture import jpeg_bytes, make_row, write_shard

NOT_AN_IMAGE = b"\xff\xd8 definitely not a jpeg"


class StandInPredictor(Predictor):
    """The real Predictor with the backbone and heads replaced: logit = mean grey level of the views."""

    def __init__(self) -> None:  # no super().__init__: it loads the trained pipeline
        self.threshold = 0.5
        self.target = Route("validator", ("stand-in",), IDENTITY)
        self.routes = [
            Route("small", ("stand-in",), IDENTITY, max_side=64),
            Route("large", ("stand-in",), Calibration(threshold=1.0, slope=2.0)),
        ]
        self.views = ViewsConfig(grid=3, overlap=0.25, small_side=64)
        self.extract = SimpleNamespace(side=16)
        self.batches: list[int] = []  # images per forward pass
        self.answered: list[str] = []  # who answered each forward pass

    def embed(self, views: np.ndarray) -> np.ndarray:
        return views.mean(axis=(1, 2), dtype=np.float32)[:, None, :]  # [V, 1, 3]

    def logits(self, features: np.ndarray, meta_rows: pl.DataFrame, route: Route) -> np.ndarray:
        assert len(meta_rows) == len(features)
        self.batches.append(len(features))
        self.answered.append(route.name)
        return features.mean(axis=(1, 2, 3)) / 64.0 - 2.0


@pytest.fixture
def run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    """`roadwork predict ARGS` with the stand-in: (exit status, JSON records, stderr, the predictor)."""

    def invoke(*args: str, stdin: str = "") -> tuple[int, list[dict[str, Any]], str, StandInPredictor]:
        predictor = StandInPredictor()
        monkeypatch.setattr(cli, "_load_predictor", lambda _: predictor)
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
        status = cli.main(["predict", *args])
        out, err = capsys.readouterr()
        return status, [json.loads(line) for line in out.splitlines()], err, predictor

    return invoke


def image(path: Path, width: int = 64, height: int = 48, color=(90, 120, 150), fmt: str = "JPEG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(jpeg_bytes(width, height, color, fmt=fmt))
    return path


def ids(records: list[dict[str, Any]]) -> list[Any]:
    return [r["id"] for r in records]


def failed(records: list[dict[str, Any]]) -> list[Any]:
    return [r["id"] for r in records if "error" in r]


# --- order -----------------------------------------------------------------------------------------


def test_results_follow_the_inputs_with_failures_in_place(run, tmp_path: Path) -> None:
    a, c = image(tmp_path / "a.jpg"), image(tmp_path / "c.png", fmt="PNG")
    corrupt = tmp_path / "b_corrupt.jpg"
    corrupt.write_bytes(NOT_AN_IMAGE)
    folder = tmp_path / "frames"
    inside = [image(folder / "2.jpg", color=(10, 10, 10)), image(folder / "10.jpg", color=(250, 250, 250))]
    missing = tmp_path / "missing.jpg"
    stdin = f"{base64.b64encode(a.read_bytes()).decode()}\n\nnot base64!\n"
    args = [str(a), str(corrupt), str(c), str(folder), str(missing), "-", str(c)]
    status, records, _, predictor = run(*args, "--batch", "2", stdin=stdin)
    assert status == 1
    # directory contents in sorted order ("10.jpg" < "2.jpg"), stdin by line number (blank lines skipped)
    assert ids(records) == [str(a), str(corrupt), str(c), str(inside[1]), str(inside[0]), str(missing),
                            "stdin:1", "stdin:3", str(c)]  # fmt: skip
    assert failed(records) == [str(corrupt), str(missing), "stdin:3"]
    assert records[1]["error"].startswith("ImageDecodeError: ")
    assert records[5]["error"] == "FileNotFoundError: No such file or directory"
    assert records[7]["error"].startswith("base64: ")
    assert records[6]["probability"] == records[0]["probability"]  # same bytes, same answer
    assert records[3]["probability"] > records[4]["probability"]  # white vs black: the stand-in's logit
    assert all(r["label"] == int(r["probability"] > 0.5) for r in records if "error" not in r)
    assert max(predictor.batches) <= 2 and sum(predictor.batches) == 6  # batched, each image once


def test_rows_with_metadata_go_to_the_target_images_by_size_to_their_route(run, tmp_path: Path) -> None:
    small, wide = image(tmp_path / "a_small.jpg", 64, 48), image(tmp_path / "b_wide.jpg", 96, 54)
    tall = image(tmp_path / "c_tall.png", 48, 65, fmt="PNG")  # the longer side decides, whatever it is
    rows = [make_row(0, image=jpeg_bytes(96, 72))]  # a row with metadata: the target's, whatever its size
    shard = write_shard(tmp_path / "natix.parquet", rows)
    status, records, _, predictor = run(str(small), str(wide), str(tall), str(shard))
    assert status == 0
    assert [r["model"] for r in records] == ["small", "large", "large", "validator"]
    # the same colour, so the same stand-in logit (mean grey 120 / 64 - 2), served through each
    # route's own calibration: the identity for the small images', sigmoid(2 (logit - 1)) for the large
    p_small, p_wide = records[0]["probability"], records[1]["probability"]
    logit = float(np.log(p_small / (1 - p_small)))
    assert logit == pytest.approx(120 / 64 - 2.0, abs=0.05)
    assert p_wide == pytest.approx(1 / (1 + np.exp(-2.0 * (logit - 1.0))), abs=1e-3)
    assert sorted(predictor.answered) == ["large", "small", "validator"]  # one pass per route


def test_a_parquet_file_answers_every_row_in_row_order(run, tmp_path: Path) -> None:
    first, last = image(tmp_path / "first.jpg"), image(tmp_path / "last.jpg", color=(1, 2, 3))
    rows = [make_row(0), make_row(1, label=2), make_row(2, gps="[0, 500]"), make_row(3, image=NOT_AN_IMAGE)]
    rows += [{**rows[0], "id": 40}, make_row(5, label=None)]  # a duplicate of row 0; no label: fine here
    shard = write_shard(tmp_path / "natix.parquet", rows)
    status, records, _, predictor = run(str(first), str(shard), str(last), "--batch", "2")
    assert status == 1
    assert ids(records) == [str(first), 0, 1, 2, 3, 40, 5, str(last)]
    assert [r.get("row") for r in records[1:-1]] == [0, 1, 2, 3, 4, 5]
    assert failed(records) == [1, 3]
    assert records[2]["error"].startswith("label: label_invalid (label 2 is not 0 or 1)")
    assert records[4]["error"].startswith("image: image_undecodable (")
    assert records[3]["repaired"] == ["gps: gps_invalid"] and "probability" in records[3]
    assert records[5]["image_id"] == records[1]["image_id"]  # the duplicate gets its first copy's answer
    assert records[5]["probability"] == records[1]["probability"]
    assert max(predictor.batches) <= 2 and sum(predictor.batches) == 5  # 3 unique valid rows + 2 files


def test_a_parquet_file_that_cannot_be_read_is_one_error(run, tmp_path: Path) -> None:
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 but not really a parquet file")
    no_label = write_shard(tmp_path / "no_label.parquet", [make_row(0)], drop=["label"])
    status, records, _, _ = run(str(broken), str(tmp_path / "missing.parquet"), str(no_label))
    assert status == 1
    assert ids(records) == [str(broken), str(tmp_path / "missing.parquet"), str(no_label)]
    assert records[0]["error"].startswith(f"IngestError: {broken}: not a readable parquet file")
    assert records[1]["error"] == "FileNotFoundError: No such file or directory"
    assert records[2]["error"].startswith(f"IngestError: {no_label}: required column 'label' is missing")


def test_a_parquet_file_without_a_valid_row_answers_each_row(run, tmp_path: Path) -> None:
    shard = write_shard(tmp_path / "bad.parquet", [make_row(0, label=7), make_row(1, image=None)])
    status, records, _, _ = run(str(shard))
    assert status == 1
    assert [(r["row"], r["error"].split(" (")[0]) for r in records] == [
        (0, "label: label_invalid"),
        (1, "image: image_missing"),
    ]


# --- directories: skipped files and broken links ---------------------------------------------------


def test_skipped_files_are_counted_on_stderr(run, tmp_path: Path) -> None:
    folder = tmp_path / "frames"
    kept = [image(folder / "a.JPG"), image(folder / "sub" / "b.webp", fmt="WEBP")]
    for name in ("notes.txt", ".DS_Store", "sub/readme.md"):
        (folder / name).write_text("not an image")
    status, records, err, _ = run(str(folder))
    assert status == 0
    assert ids(records) == [str(p) for p in kept]
    assert err.strip() == f"roadwork predict: skipped 3 non-image file(s) in {folder}/"
    _, _, err, _ = run(str(folder / "sub" / "b.webp"))
    assert err == ""  # nothing skipped, nothing said


def test_a_dangling_link_gives_an_error_line(run, tmp_path: Path) -> None:
    folder = tmp_path / "frames"
    a, c = image(folder / "a.jpg"), image(folder / "c.jpg")
    (folder / "b.jpg").symlink_to(tmp_path / "gone.jpg")
    (folder / "d.txt").symlink_to(tmp_path / "gone.txt")  # not an image by its name: counted as skipped
    status, records, err, _ = run(str(folder), str(folder / "b.jpg"))
    assert status == 1
    assert ids(records) == [str(a), str(folder / "b.jpg"), str(c), str(folder / "b.jpg")]
    assert records[1] == {
        "id": str(folder / "b.jpg"),
        "error": f"broken symbolic link to {tmp_path / 'gone.jpg'}",
    }
    assert records[3] == records[1]
    assert "skipped 1 non-image file(s)" in err


def test_rejects_a_second_stdin_and_a_zero_batch(run, tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        run("-", "-")
    with pytest.raises(SystemExit):
        run(str(tmp_path), "--batch", "0")


# --- the pixel limit -------------------------------------------------------------------------------


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """The size of every image PIL decodes from now on (once per `load` call)."""
    seen: list[tuple[int, int]] = []
    load = ImageFile.ImageFile.load

    def recording(self: ImageFile.ImageFile):
        seen.append(self.size)
        return load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", recording)
    return seen


def test_png_over_the_pixel_limit_is_refused_without_decoding(
    run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loads: list[tuple[int, int]]
) -> None:
    monkeypatch.setattr(images, "MAX_PIXELS", 400 * 300)
    over, at = (
        image(tmp_path / "over.png", 401, 300, fmt="PNG"),
        image(tmp_path / "at.png", 400, 300, fmt="PNG"),
    )
    status, records, _, _ = run(str(over), str(at))
    assert status == 1
    assert records[0]["id"] == str(over)
    size = over.stat().st_size
    assert records[0]["error"] == (
        f"ImageTooLargeError: PNG of {size} bytes, 401x300 (0.1 MP to decode): over the limit of 0.12 MP "
        "(roadwork.data.images.MAX_PIXELS)"
    )
    assert "probability" in records[1]
    assert (401, 300) not in loads and (400, 300) in loads


def test_jpeg_over_the_limit_is_fine_when_its_reduced_decode_is_under(
    run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loads: list[tuple[int, int]]
) -> None:
    # 800x600 with 16 px views: the smallest tile is 240 px, so the JPEG decodes at 1/8 (100x75).
    monkeypatch.setattr(images, "MAX_PIXELS", 100 * 75)
    jpeg, png = image(tmp_path / "big.jpg", 800, 600), image(tmp_path / "big.png", 800, 600, fmt="PNG")
    status, records, _, _ = run(str(jpeg), str(png))
    assert status == 1
    assert "probability" in records[0]
    assert "800x600 (0.5 MP to decode): over the limit" in records[1]["error"]
    assert set(loads) == {(100, 75)}  # the PNG was never decoded
    # the same JPEG decoded at full size would be refused
    with pytest.raises(images.ImageTooLargeError, match=r"JPEG of .* 800x600"):
        images.decode(jpeg.read_bytes())


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares `width` x `height` and holds no pixel data: it opens, it never decodes."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # PIL warns above 89 MP
def test_the_real_limit_refuses_a_12000_px_png_from_its_header(run, tmp_path: Path) -> None:
    assert images.MAX_PIXELS == 64_000_000
    just_over, huge = tmp_path / "just_over.png", tmp_path / "huge.png"
    just_over.write_bytes(png_header(8000, 8001))
    huge.write_bytes(png_header(12_000, 12_000))
    status, records, _, _ = run(str(just_over), str(huge))
    assert status == 1
    assert "8000x8001 (64.0 MP to decode): over the limit of 64 MP" in records[0]["error"]
    assert "12000x12000 (144.0 MP to decode): over the limit of 64 MP" in records[1]["error"]


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_an_oversized_png_in_a_parquet_file_is_quarantined_unread(
    run, tmp_path: Path, loads: list[tuple[int, int]]
) -> None:
    shard = write_shard(
        tmp_path / "natix.parquet", [make_row(0, image=png_header(12_000, 12_000)), make_row(1)]
    )
    _, records, _, _ = run(str(shard))
    assert records[0]["error"].startswith("image: image_too_large (PNG of ")
    assert "probability" in records[1]
    assert (12_000, 12_000) not in loads
