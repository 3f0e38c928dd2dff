"""The validator's protocols and levels, each against its definition (shared VALIDATOR.md)."""

from __future__ import annotations

import io
import math

import cv2
import numpy as np
import pytest
from PIL import Image

from roadwork.views import protocols as V


def frame(width: int = 480, height: int = 270, seed: int = 0) -> Image.Image:
    """A frame: a left half of one colour, a right half of noise."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(60, 200, (height, width, 3)).astype(np.uint8)
    pixels[:, : width // 2] = (200, 40, 40)
    return Image.fromarray(pixels)


def test_crop_level0_is_the_centre_square_resized():
    image = frame()
    got = np.asarray(V.challenge(image, 0, np.random.default_rng(0)), dtype=np.int16)
    want = np.asarray(image.crop((105, 0, 375, 270)).resize((224, 224), Image.Resampling.BILINEAR))
    assert got.shape == (224, 224, 3)
    np.testing.assert_array_equal(got, want)
    assert V.centre_box(481, 270) == (106, 0, 376, 270)  # 105.5 rounds half to even, as torchvision


def test_crop_is_a_square_of_a_fifth_to_all_of_the_area_and_rotation_leaves_black_corners():
    grey = Image.new("RGB", (480, 270), (128, 128, 128))
    found_black, areas = False, []
    for seed in range(40):
        top, left, h, w = V.square_crop_box(480, 270, np.random.default_rng(seed))
        assert h == w and top >= 0 and top + h <= 270 and left >= 0 and left + w <= 480
        areas.append(w * h / (480 * 270))
        out = np.asarray(V.challenge(grey, 1, np.random.default_rng(seed)))
        found_black |= bool((out.max(axis=2) == 0).any())
        assert set(np.unique(out)) <= set(range(129))  # nearest: no new grey above 128
    assert min(areas) >= 0.2 - 0.01 and max(areas) <= 270 * 270 / (480 * 270) + 1e-9  # a 16:9 frame: <= 56 %
    assert found_black, "rotations of up to 20 degrees leave black corners in some crops"


def test_crop_falls_back_to_the_centred_square_of_the_short_side_when_no_draw_fits():
    class NeverFits:
        def uniform(self, lo, hi):
            return hi  # the whole area: never a square inside a tall image

        def integers(self, lo, hi):
            return lo

    assert V.square_crop_box(100, 400, NeverFits()) == (150, 0, 100, 100)


@pytest.mark.parametrize(
    ("size", "geometry"),
    [
        ((1920, 1080), (224, 126, 0, 49)),
        ((1280, 720), (224, 125, 0, 49)),  # 720 x 0.175 is 125.99999999999999: truncated to 125
        ((4032, 3024), (224, 168, 0, 28)),
        ((3024, 4032), (168, 224, 28, 0)),
        ((100, 50), (224, 112, 0, 56)),  # small images are scaled up
    ],
)
def test_letterbox_scales_to_fit_truncates_and_centres(size, geometry):
    assert V.letterbox_geometry(*size) == geometry


def test_letterbox_level0_is_the_whole_frame_on_black_bands_and_later_levels_only_rotate_it():
    image = frame(480, 270)
    out = np.asarray(V.challenge(image, 0, np.random.default_rng(0), "letterbox"))
    new_w, new_h, left, top = V.letterbox_geometry(480, 270)
    assert (out[:top] == 0).all() and (out[top + new_h :] == 0).all()
    want = np.asarray(image.resize((new_w, new_h), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(out[top : top + new_h, left : left + new_w], want)
    for seed in range(5):  # rotation about the centre: the centre pixel stays; no crop zooms in
        rotated = np.asarray(V.challenge(image, 1, np.random.default_rng(seed), "letterbox"))
        np.testing.assert_array_equal(rotated[112, 112], out[112, 112])
        assert (rotated[:12] == 0).all()  # the bands stay: a 224 x 126 strip turned 20 degrees spans 195 rows
    reduced = image.resize((240, 135))  # decoded at half scale: the geometry of the displayed size
    half = np.asarray(V.challenge(reduced, 0, np.random.default_rng(0), "letterbox", size=(480, 270)))
    assert (half[:top] == 0).all() and (half[top + new_h :] == 0).all() and half[top].any()


def test_native_is_the_image_untouched_and_its_jpeg_keeps_its_size():
    image = frame(320, 240)
    np.testing.assert_array_equal(
        np.asarray(V.challenge(image, 3, np.random.default_rng(0), "native")), image
    )
    data = V.to_jpeg(image, 95)
    out = V.protocol_jpeg(data, (320, 240), protocol="native", level=2, rng=np.random.default_rng(0))
    decoded = Image.open(io.BytesIO(out))
    assert decoded.size == (320, 240) and decoded.info.get("exif") is None
    assert out == V.to_jpeg(Image.open(io.BytesIO(data)).convert("RGB"))  # quality 75, nothing else


@pytest.mark.parametrize("protocol", ["crop", "letterbox"])
@pytest.mark.parametrize("level", V.LEVELS)
def test_a_label_map_follows_its_image_through_each_level(protocol, level):
    """The pretraining corpus's targets: the same geometry as the pixels, by nearest neighbour."""
    labels = np.zeros((270, 480), np.uint8)
    labels[40:120, 60:200], labels[150:260, 300:420] = 3, 7  # two objects
    image = Image.fromarray(np.repeat(labels[..., None] * 30, 3, axis=2))  # the labels as pixels
    for seed in range(5):
        out, out_labels = V.challenge_pair(image, labels, level, np.random.default_rng(seed), protocol)
        alone = V.challenge(image, level, np.random.default_rng(seed), protocol)  # labels change no draw
        np.testing.assert_array_equal(np.asarray(out), np.asarray(alone))
        assert out_labels.shape == (224, 224) and set(np.unique(out_labels)) <= {0, 3, 7}
        if level < 2:  # level 2's distortions change pixel values; the geometry is level 1's
            seen = np.rint(np.asarray(out, np.float32)[..., 1] / 30)
            assert (seen == out_labels).mean() > 0.97  # bilinear pixels vs nearest labels: edges only


def test_distortions_equal_their_formulas_on_8_bit_pixels():
    pixels = np.asarray(frame(224, 224))
    x = pixels.astype(np.float64)
    to_ycc = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
    ycc = x @ to_ycc.T + [0, 128, 128]  # JPEG's YCbCr, chroma neutral at 128
    ycc[..., 1:] = 128 + 0.4 * (ycc[..., 1:] - 128)
    expected = (ycc - [0, 128, 128]) @ np.linalg.inv(to_ycc).T
    got = V.saturate(pixels, 0.4)
    assert got.dtype == np.uint8 and np.abs(got - np.floor(np.clip(expected, 0, 255))).max() <= 1
    grey = np.full((4, 4, 3), 100, np.uint8)
    np.testing.assert_array_equal(V.saturate(grey, 0.3), grey)  # no colour cast
    np.testing.assert_array_equal(
        V.contrast(pixels, 0.85), (x * np.float32(0.85)).astype(np.uint8)
    )  # truncated
    half = cv2.resize(pixels, (112, 112), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(V.rescale(pixels, 2), cv2.resize(half, (224, 224)))
    assert V.truncate(np.array([0.9, 254.99, 300.0, -3.0])).tolist() == [0, 254, 255, 0]


def test_level2_applies_each_distortion_with_probability_one_half():
    image = np.asarray(V.challenge(frame(), 1, np.random.default_rng(3)))

    class Draws:  # the three coin flips of level 2
        def __init__(self, flips):
            self.flips = iter(flips)

        def random(self):
            return next(self.flips)

    np.testing.assert_array_equal(V.distort(image, 2, Draws([0.9, 0.9, 0.9])), image)
    only_contrast = V.distort(image, 2, Draws([0.9, 0.1, 0.9]))
    np.testing.assert_array_equal(only_contrast, (image * np.float32(0.85)).astype(np.uint8))


def test_level3_noise_has_the_validators_scale_and_blur_the_stated_kernel():
    flat = np.full((448, 448, 3), 128, dtype=np.uint8)
    noisy = cv2.cvtColor(
        V.noise(flat, 0.002, rng=np.random.default_rng(0)).astype(np.float32), cv2.COLOR_RGB2YCrCb
    )
    # the validator's studio-range round trip: 255^2 / 219 sqrt(var) on Y, 255^2 / 224 sqrt(var) on chroma
    assert noisy[..., 0].std() == pytest.approx(255**2 / 219 * math.sqrt(0.002), rel=0.05)
    assert noisy[..., 1].std() == pytest.approx(255**2 / 224 * math.sqrt(0.002), rel=0.05)
    spike = np.zeros((31, 31, 3), np.uint8)
    spike[15, 15] = 255
    blurred = V.blur(spike, 9).astype(np.float64)
    kernel = cv2.getGaussianKernel(9, 1.5)
    np.testing.assert_allclose(blurred[..., 0], 255 * np.pad(kernel @ kernel.T, 11), atol=0.5)


@pytest.mark.parametrize("protocol", V.PROTOCOLS)
@pytest.mark.parametrize("level", V.LEVELS)
def test_every_protocol_and_level_is_a_deterministic_jpeg_of_its_size(protocol, level):
    data = V.to_jpeg(frame(1008, 756), 90)  # a 4:3 phone photo at a quarter of its size
    size = (1008, 756)
    first = V.protocol_jpeg(data, size, protocol=protocol, level=level, rng=V.challenge_rng(7, f"i:{level}"))
    again = V.protocol_jpeg(data, size, protocol=protocol, level=level, rng=V.challenge_rng(7, f"i:{level}"))
    assert first == again
    decoded = Image.open(io.BytesIO(first))
    assert decoded.format == "JPEG" and decoded.mode == "RGB"
    assert decoded.size == (size if protocol == "native" else (224, 224))


def test_protocol_draws_follow_their_shares_and_bad_names_are_refused():
    rng = np.random.default_rng(0)
    draws = [V.draw_protocol(rng, {"crop": 3.0, "letterbox": 1.0, "native": 0.0}) for _ in range(2000)]
    assert draws.count("native") == 0 and 0.7 < draws.count("crop") / len(draws) < 0.8
    with pytest.raises(ValueError, match="none is positive"):
        V.draw_protocol(rng, {"crop": 0.0})
    with pytest.raises(ValueError, match="challenge level 4"):
        V.challenge(frame(), 4, np.random.default_rng(0))
    with pytest.raises(ValueError, match="protocol 'square'"):
        V.challenge(frame(), 0, np.random.default_rng(0), "square")
    with pytest.raises(ValueError, match="distinct"):
        V.ValidateConfig(protocols=("crop", "crop"))


def test_stratified_draws_give_an_image_s_copies_one_protocol_each_in_their_shares():
    rng = np.random.default_rng(1)
    shares = {"crop": 1.0, "letterbox": 1.0}
    pairs = [tuple(V.draw_protocol(rng, shares, (j, 2)) for j in range(2)) for _ in range(200)]
    assert set(pairs) == {("crop", "letterbox")}  # two copies at equal shares: one of each
    thirds = [V.draw_protocol(rng, {"crop": 2.0, "native": 1.0}, (j, 3)) for j in range(3) for _ in range(50)]
    assert thirds.count("crop") == 100 and thirds.count("native") == 50
