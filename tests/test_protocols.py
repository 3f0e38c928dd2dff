"""The validator's challenge levels, each against its definition (shared VALIDATOR.md)."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from roadwork.views import protocols as V


def frame(width: int = 480, height: int = 270, seed: int = 0) -> Image.Image:
    """A 16:9 frame: a left half of one colour, a right half of another, and noise."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(60, 200, (height, width, 3)).astype(np.uint8)
    pixels[:, : width // 2] = (200, 40, 40)
    return Image.fromarray(pixels)


def test_level0_is_the_centre_square_resized():
    image = frame()
    got = np.asarray(V.challenge(image, 0, np.random.default_rng(0)), dtype=np.int16)
    want = np.asarray(image.crop((105, 0, 375, 270)).resize((224, 224), Image.Resampling.BILINEAR))
    assert got.shape == (224, 224, 3)
    np.testing.assert_array_equal(got, want)


def test_rotation_leaves_black_corners_and_crop_keeps_the_frame_aspect_range():
    grey = Image.new("RGB", (480, 270), (128, 128, 128))
    found_black = False
    for seed in range(20):
        rng = np.random.default_rng(seed)
        top, left, h, w = V.crop_box(480, 270, rng)
        assert top >= 0 and top + h <= 270 and left >= 0 and left + w <= 480
        assert 3 / 4 - 0.02 <= w / h <= 4 / 3 + 0.02
        assert w * h <= 270 * 270 * (4 / 3) + 1e-6  # a 16:9 frame: the crop can never be the whole frame
        out = np.asarray(V.challenge(grey, 1, np.random.default_rng(seed)))
        found_black |= bool((out.max(axis=2) == 0).any())
        assert set(np.unique(out)) <= {0, 128} | set(range(1, 128))  # nearest: no new grey above 128
    assert found_black, "rotations of up to 20 degrees leave black corners in some crops"


@pytest.mark.parametrize("level", V.LEVELS)
def test_a_label_map_follows_its_image_through_each_level(level):
    """The pretraining corpus's targets: the same crop and rotation as the pixels, by nearest neighbour."""
    labels = np.zeros((270, 480), np.uint8)
    labels[40:120, 60:200], labels[150:260, 300:420] = 3, 7  # two objects
    image = Image.fromarray(np.repeat(labels[..., None] * 30, 3, axis=2))  # the labels as pixels
    for seed in range(5):
        out, out_labels = V.challenge_pair(image, labels, level, np.random.default_rng(seed))
        alone = V.challenge(image, level, np.random.default_rng(seed))  # the labels change no draw
        np.testing.assert_array_equal(np.asarray(out), np.asarray(alone))
        assert out_labels.shape == (224, 224) and set(np.unique(out_labels)) <= {0, 3, 7}
        if level < 2:  # level 2's distortions change pixel values; the geometry is level 1's
            seen = np.rint(np.asarray(out, np.float32)[..., 1] / 30)
            assert (seen == out_labels).mean() > 0.97  # bilinear pixels vs nearest labels: edges only


def test_crop_falls_back_to_the_clamped_centre_when_no_draw_fits():
    class NeverFits:
        def uniform(self, lo, hi):
            return hi  # the whole area at the widest aspect: never fits a tall image

        def integers(self, lo, hi):
            return lo

    assert V.crop_box(100, 400, NeverFits()) == ((400 - 133) // 2, 0, 133, 100)


def test_level2_distortions_equal_their_formulas():
    pixels = np.asarray(frame(224, 224), dtype=np.float32)
    to_ycc = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
    ycc = pixels @ to_ycc.T + [0, 128, 128]  # JPEG's YCbCr, chroma neutral at 128
    ycc[..., 1:] = 128 + 0.4 * (ycc[..., 1:] - 128)
    expected = (ycc - [0, 128, 128]) @ np.linalg.inv(to_ycc).T
    np.testing.assert_allclose(V.saturate(pixels, 0.4), expected, atol=1e-3)
    grey = np.full((4, 4, 3), 100.0, np.float32)
    np.testing.assert_allclose(V.saturate(grey, 0.3), grey, atol=1e-4)  # no colour cast
    grey_frame = np.repeat((pixels @ V.LUMA)[..., None], 3, -1)
    np.testing.assert_allclose(V.saturate(pixels, 0.0), grey_frame, atol=1e-4)
    np.testing.assert_array_equal(V.contrast(pixels, 0.85), pixels * np.float32(0.85))
    half = cv2.resize(pixels, (112, 112), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(V.rescale(pixels, 2), cv2.resize(half, (224, 224)))


def test_level2_applies_each_distortion_with_probability_one_half():
    image = V.challenge(frame(), 1, np.random.default_rng(3))

    class Draws:  # level 1's draws from a real generator, then the three coin flips of level 2
        def __init__(self, flips):
            self.flips = iter(flips)

        def random(self):
            return next(self.flips)

    untouched = V.distort(image, 2, Draws([0.9, 0.9, 0.9]))
    np.testing.assert_array_equal(np.asarray(untouched), np.asarray(image))
    only_contrast = np.asarray(V.distort(image, 2, Draws([0.9, 0.1, 0.9])), dtype=np.float32)
    np.testing.assert_allclose(only_contrast, np.rint(np.asarray(image, np.float32) * 0.85), atol=0.5)


def test_level3_noise_has_the_stated_variance_and_blur_the_stated_kernel():
    flat = np.full((224, 224, 3), 128.0, dtype=np.float32)
    noisy = V.noise(flat, 0.002, rng=np.random.default_rng(0))
    luma = cv2.cvtColor(noisy, cv2.COLOR_RGB2YCrCb)[..., 0]
    assert luma.std() / 255 == pytest.approx(np.sqrt(0.002), rel=0.05)
    spike = np.zeros((31, 31, 3), np.float32)
    spike[15, 15] = 255.0
    blurred = V.blur(spike, 9)
    assert (blurred[..., 0] > 0).sum() == 81  # a 9 x 9 kernel spreads the spike over 9 x 9 pixels
    kernel = cv2.getGaussianKernel(9, 1.5)
    np.testing.assert_allclose(blurred[..., 0], 255 * np.pad(kernel @ kernel.T, 11), atol=1e-3)


@pytest.mark.parametrize("level", V.LEVELS)
def test_every_level_decodes_as_a_224_jpeg_and_is_deterministic(level):
    image = frame(1008, 756)  # a 4:3 phone photo
    first = V.to_jpeg(V.challenge(image, level, V.challenge_rng(7, f"img:{level}")))
    again = V.to_jpeg(V.challenge(image, level, V.challenge_rng(7, f"img:{level}")))
    assert first == again
    decoded = Image.open(io.BytesIO(first))
    assert decoded.format == "JPEG" and decoded.size == (224, 224) and decoded.mode == "RGB"


def test_unknown_level_is_refused():
    with pytest.raises(ValueError, match="challenge level 4"):
        V.challenge(frame(), 4, np.random.default_rng(0))
