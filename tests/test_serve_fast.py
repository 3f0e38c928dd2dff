"""The miner's fast path without a trained pipeline: a PIL image answered without re-encoding.

`tiny_served` builds what a trained project serves in seconds: a random tiny DINOv3 saved with
`save_pretrained`, two random heads saved as the `train` stage saves them (a cross-fitted MLP and a
one-block full head), and an `ensemble.json` with a route for small images and one for the rest. The
detector and `Predictor.predict` then run their real code over it. The same with a trained pipeline is
tested end to end in tests/test_pipeline.py.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from roadwork.config import load_params
from roadwork.data import images
from roadwork.data.images import ImageTooLargeError, decode, decode_image
from roadwork.features.backbone import build_tiny
from roadwork.features.cache import CacheKey
from roadwork.features.manifest import weights_fingerprint, write_manifest
from roadwork.models import build_model
from roadwork.models.folds import FoldMean
from roadwork.serve.detector import InvalidImageError, RoadworkDetector
from roadwork.serve.predictor import Predictor, Served
from roadwork.train.checkpoint import save_head
from roadwork.train.config import TOKEN_SETS, member_config
from roadwork.train.data import NULL, Vocab
from roadwork.views.crops import served_views
from roadwork.views.plan import ViewsConfig
from tests.extract_job import TINY

ROOT = Path(__file__).resolve().parents[1]
SIDE = 32  # view side: two patches of 16
SMALL_SIDE = 256  # the small images' route: a validator's 224 px queries


def tiny_served(root: Path) -> Served:
    """A served model under `root` (backbone, heads, choice) with random weights, as a trained project
    lays it out: what `Served.of_project` would read."""
    params = load_params(ROOT / "params.yaml")
    backbone = build_tiny(TINY)
    backbone.save_pretrained(root / "backbone")
    write_manifest(root / "backbone", {"source": "tiny", "fingerprint": weights_fingerprint(backbone)})
    vocab = Vocab(
        {"weather": [NULL, "Sunny"], "daytime": [NULL, "Light"], "scene_environment": [NULL, "Urban"]}
    )
    members = {
        "mlp": {"model": "mlp", "crossfit": True, "hidden": 16},
        "head": {"model": "head", "layers": 1},
    }
    for seed, (name, overrides) in enumerate(members.items()):
        config = member_config(params["train"], overrides | {"width": 32, "heads": 2, "masks": False}, name)
        spec = config.model_spec(
            view_dim=32 * len(TOKEN_SETS[config.tokens]), n_views=12, vocab_sizes=vocab.sizes()
        )
        torch.manual_seed(seed)
        model = FoldMean([build_model(spec), build_model(spec)]) if config.crossfit else build_model(spec)
        heldout = {"train-row-a": 0, "train-row-b": 1} if config.crossfit else None
        save_head(
            root / "heads" / name,
            model=model,
            spec=spec,
            vocab=vocab,
            config=config,
            summary={},
            heldout=heldout,
        )
    small = {"threshold": 0.05, "slope": 3.0}
    large = {"threshold": -0.1, "slope": 2.0}
    choice = {
        "members": ["mlp", "head"],
        "use": "ensemble",
        "threshold": 0.5,
        "target": "validator",
        "calibration": large,
        "routes": [
            {"name": "small", "members": ["head"], "max_side": SMALL_SIDE, "calibration": small},
            {"name": "large", "members": ["mlp", "head"], "max_side": None, "calibration": large},
        ],
    }
    (root / "submission").mkdir(parents=True)
    (root / "submission/ensemble.json").write_text(json.dumps(choice))
    return Served(
        backbone=root / "backbone",
        heads=root / "heads",
        choice=choice,
        extract=CacheKey(side=SIDE, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), seed=0),
        views=ViewsConfig(grid=3, overlap=0.25, small_side=SMALL_SIDE, small_rule="half", trim_bands=True),
        dtype="float32",
    )


def scene(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A smooth picture with detail (a JPEG of noise would be all high frequencies)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / width * 200, y / height * 180, (x + y) / (width + height) * 255], axis=-1)
    base += rng.normal(0, 12, base.shape)
    for _ in range(6):  # a few bright blocks, like cones
        cx, cy = int(rng.integers(0, width - 8)), int(rng.integers(0, height - 8))
        base[cy : cy + max(4, height // 20), cx : cx + max(4, width // 40)] = (250, 120, 20)
    return np.clip(base, 0, 255).astype(np.uint8)


def jpeg(width: int, height: int, seed: int = 0, letterbox: bool = False, **save: object) -> bytes:
    pixels = scene(width, height, seed)
    if letterbox:  # the April 2026 protocol: a frame centred on black bands
        pixels[: height // 5], pixels[-(height // 5) :] = 0, 0
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=75, **save)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Served:
    return tiny_served(tmp_path_factory.mktemp("served"))


@pytest.fixture(scope="module")
def detector(served: Served) -> RoadworkDetector:
    return RoadworkDetector(predictor=Predictor(served, device="cpu"))


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """The size of every image PIL decodes from now on (once per `load` call of an unloaded image)."""
    seen: list[tuple[int, int]] = []
    load = ImageFile.ImageFile.load

    def recording(self: ImageFile.ImageFile):
        if self.tile:  # pixels still to decode: a real decode
            seen.append(self.size)
        return load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", recording)
    return seen


# --- one decode for bytes and for an opened image ---------------------------------------------------


@pytest.mark.parametrize("scale", [1.0, 0.5, 0.2])
def test_decode_image_gives_the_pixels_of_decode(scale: float) -> None:
    data = jpeg(803, 469)
    expected, expected_scale = decode(data, min_side_scale=scale)
    image, got_scale = decode_image(Image.open(io.BytesIO(data)), min_side_scale=scale)
    assert got_scale == expected_scale and image.size == expected.size
    assert np.array_equal(np.asarray(image), np.asarray(expected))


def test_an_mpo_decodes_its_first_frame_at_reduced_scale_from_the_opened_image() -> None:
    first, second = Image.fromarray(scene(640, 480, seed=1)), Image.fromarray(scene(640, 480, seed=2))
    buffer = io.BytesIO()
    first.save(buffer, "MPO", save_all=True, append_images=[second], quality=90)
    image = Image.open(io.BytesIO(buffer.getvalue()))
    assert image.format == "MPO"
    decoded, scale = decode_image(image, min_side_scale=0.5)
    expected, _ = decode(buffer.getvalue(), min_side_scale=0.5)
    assert scale == 0.5 and np.array_equal(np.asarray(decoded), np.asarray(expected))
    assert image.size == (640, 480) and image.tile  # the caller's image: untouched


def test_decode_image_leaves_the_callers_image_as_it_was(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[images.EXIF_ORIENTATION] = 6
    path = tmp_path / "rotated.jpg"
    path.write_bytes(jpeg(640, 480, exif=exif.tobytes()))
    image = Image.open(path)  # opened from a file: PIL would close it after a load
    decoded, scale = decode_image(image, min_side_scale=0.25)
    assert scale == 0.25 and decoded.size == (120, 160)  # reduced, and turned upright
    # the caller's image: still unloaded, full size, its EXIF untouched, and it still decodes
    assert image.size == (640, 480) and image.tile and image.getexif()[images.EXIF_ORIENTATION] == 6
    image.load()
    assert image.size == (640, 480)


def test_a_loaded_image_is_used_as_it_is() -> None:
    data = jpeg(640, 480)
    image = Image.open(io.BytesIO(data))
    image.load()  # the miner decoded it already: no draft is possible any more
    decoded, scale = decode_image(image, min_side_scale=0.25)
    assert scale == 1.0 and decoded.size == (640, 480)
    assert np.array_equal(np.asarray(decoded), np.asarray(decode(data)[0]))


@pytest.mark.parametrize(
    ("size", "letterbox"), [((224, 224), False), ((224, 224), True), ((1200, 900), False)]
)
def test_served_views_are_the_same_from_bytes_and_from_the_opened_image(
    size: tuple[int, int], letterbox: bool
) -> None:
    served = tiny_views()
    data = jpeg(*size, letterbox=letterbox)
    from_bytes = served_views(data, views=served, side=SIDE)
    from_image = served_views(Image.open(io.BytesIO(data)), views=served, side=SIDE)
    assert from_bytes.shape == (12, SIDE, SIDE, 3) and np.array_equal(from_bytes, from_image)


def tiny_views() -> ViewsConfig:
    return ViewsConfig(grid=3, overlap=0.25, small_side=SMALL_SIDE, small_rule="half", trim_bands=True)


# --- the detector ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "letterbox", "route"),
    [((224, 224), False, "small"), ((224, 224), True, "small"), ((1600, 1200), False, "large")],
)
def test_the_detector_answers_what_predict_answers_for_the_same_jpeg(
    detector: RoadworkDetector, size: tuple[int, int], letterbox: bool, route: str, loads: list
) -> None:
    data = jpeg(*size, seed=3, letterbox=letterbox)
    [expected] = detector.predictor.predict([("query", data)])
    assert expected["model"] == route
    loads.clear()
    answer = detector(Image.open(io.BytesIO(data)))
    assert answer == pytest.approx(expected["probability"], abs=1e-6)
    # a large JPEG decodes at a reduced scale (its smallest view, 1/4 of the short side, needs 32 px)
    assert loads == ([(200, 150)] if route == "large" else [size])


def test_the_detector_refuses_bad_input_with_the_reason(detector: RoadworkDetector) -> None:
    data = jpeg(224, 224)
    with pytest.raises(InvalidImageError, match="expected a PIL image, got bytes"):
        detector(data)  # type: ignore[arg-type]
    with pytest.raises(InvalidImageError, match=r"empty image \(0x0\)"):
        detector(Image.new("RGB", (0, 0)))
    truncated = Image.open(io.BytesIO(data[: len(data) // 2]))  # the header opens, the pixels do not
    with pytest.raises(InvalidImageError, match=r"cannot read the image: .*truncated"):
        detector(truncated)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_an_image_over_the_pixel_limit_is_refused_without_a_decode(
    detector: RoadworkDetector, monkeypatch: pytest.MonkeyPatch, loads: list, fmt: str
) -> None:
    # An 800x600 JPEG decodes at 1/4 (200x150: its smallest view still gets its 32 px): over a limit of
    # one pixel less, even reduced; a PNG has no reduced decode.
    monkeypatch.setattr(images, "MAX_PIXELS", 200 * 150 - 1)
    buffer = io.BytesIO()
    Image.fromarray(scene(800, 600)).save(buffer, fmt)
    with pytest.raises(InvalidImageError, match=r"refused: .*over the limit") as refused:
        detector(Image.open(io.BytesIO(buffer.getvalue())))
    assert isinstance(refused.value.__cause__, ImageTooLargeError)
    assert loads == []  # not one pixel decoded
    monkeypatch.setattr(images, "MAX_PIXELS", 200 * 150)  # at the limit: the JPEG is answered
    assert 0.0 <= detector(Image.open(io.BytesIO(jpeg(800, 600)))) <= 1.0


def test_probability_of_and_predict_share_the_route_and_its_calibration(detector: RoadworkDetector) -> None:
    predictor = detector.predictor
    for size, route in (((224, 168), "small"), ((640, 480), "large")):
        data = jpeg(*size, seed=5)
        features, got = predictor.view_features(Image.open(io.BytesIO(data)))
        assert got == size and predictor.route(got).name == route
        log_odds = predictor.log_odds(features[None], [got])[0]
        assert detector(Image.open(io.BytesIO(data))) == pytest.approx(1 / (1 + np.exp(-log_odds)), abs=1e-12)
