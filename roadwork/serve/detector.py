"""What a StreetVision miner plugs in: one detector, built once, answering one image at a time.

    from roadwork.serve.detector import RoadworkDetector

    detector = RoadworkDetector("/path/to/roadwork")   # at start-up: loads the backbone and the heads
    probability = detector(pil_image)                  # per query: a float in [0, 1], > 0.5 is roadwork

The answer is exactly `roadwork predict`'s for the same pixels (the image is handed over losslessly):
for a validator's 224 px query, from the model `submit` chose for `submit.target` (on the embedded
default: the validator), calibrated so that its chosen cut sits at 0.5; a full-size image gets the
image-only choice (`roadwork.serve.predictor.Predictor.route`). Calls from several threads are served one at
a time. Bad input raises `InvalidImageError` with the reason, never returns a guess: a miner should not
answer a query it could not read.
"""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import Any

from PIL import Image

from roadwork.config import PARAMS_FILE, load_params
from roadwork.serve.predictor import Predictor


class InvalidImageError(ValueError):
    """An input the detector cannot answer: not an image, empty, or refused by the decoder."""


def _in_project(params: dict[str, Any], root: Path) -> dict[str, Any]:
    """`params` with every path made absolute under the project `root` (the detector may run anywhere)."""
    paths = {k: str(v if Path(v).is_absolute() else root / v) for k, v in params["paths"].items()}
    return params | {"paths": paths}


class RoadworkDetector:
    """The served model of a trained project directory, as a callable: PIL image -> probability."""

    def __init__(self, project: str | Path = ".", device: str = "auto"):
        root = Path(project).resolve()
        self.predictor = Predictor(_in_project(load_params(root / PARAMS_FILE), root), device=device)
        self._lock = threading.Lock()

    def __call__(self, image: Image.Image) -> float:
        if not isinstance(image, Image.Image):
            raise InvalidImageError(f"expected a PIL image, got {type(image).__name__}")
        if image.width < 1 or image.height < 1:
            raise InvalidImageError(f"empty image ({image.width}x{image.height})")
        buffer = io.BytesIO()
        try:
            image.convert("RGB").save(buffer, format="PNG")  # lossless: the pixels the miner received
        except OSError as e:  # a truncated or unreadable image fails when its pixels are loaded
            raise InvalidImageError(f"cannot read the image: {e}") from e
        with self._lock:
            try:
                return self.predictor.probability(buffer.getvalue())
            except ValueError as e:
                raise InvalidImageError(str(e)) from e
