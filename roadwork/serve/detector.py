"""What a StreetVision miner plugs in: one detector, built once, answering one image at a time.

    from roadwork.serve.detector import RoadworkDetector

    detector = RoadworkDetector.from_pretrained("/path/to/export")  # a `roadwork export` folder (or hub id)
    detector = RoadworkDetector("/path/to/roadwork")                 # or a trained project directory
    probability = detector(Image.open(io.BytesIO(jpeg_bytes)))      # a float in [0, 1], > 0.5 is roadwork

The image is used as the miner opened it, never re-encoded: an unloaded JPEG is decoded at the reduced
JPEG scale its views need (a 12 MP photo in tens of milliseconds instead of seconds), so the answer is
exactly `roadwork predict`'s for the same file. An image the miner has already loaded is used as it is.
A validator's 224 px query gets the model `submit` chose for the small images, a full-size image the
one chosen for full-size images (`roadwork.serve.predictor.Predictor.route`), each calibrated so that
its chosen cut sits at 0.5. Calls from several threads are served one at a time. Bad input raises
`InvalidImageError` with the reason, never returns a guess: a miner should not answer a query it could
not read. An image over `roadwork.data.images.MAX_PIXELS` is refused from its header, before any pixel
is decoded.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from PIL import Image

from roadwork.config import PARAMS_FILE, load_params
from roadwork.data.images import ImageDecodeError, ImageTooLargeError
from roadwork.serve.predictor import Predictor, Served


class InvalidImageError(ValueError):
    """An input the detector cannot answer: not an image, empty, truncated, or over the pixel limit."""


def _in_project(params: dict[str, Any], root: Path) -> dict[str, Any]:
    """`params` with every path made absolute under the project `root` (the detector may run anywhere)."""
    paths = {k: str(v if Path(v).is_absolute() else root / v) for k, v in params["paths"].items()}
    return params | {"paths": paths}


class RoadworkDetector:
    """The served model as a callable, PIL image -> probability: of a trained project directory, or of
    an exported folder (`from_pretrained`)."""

    def __init__(
        self, project: str | Path = ".", device: str = "auto", *, predictor: Predictor | None = None
    ) -> None:
        if predictor is None:
            root = Path(project).resolve()
            predictor = Predictor(_in_project(load_params(root / PARAMS_FILE), root), device=device)
        self.predictor = predictor
        self._lock = threading.Lock()

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, device: str = "auto", revision: str | None = None
    ) -> RoadworkDetector:
        """The detector of a folder `roadwork export` wrote (or the Hugging Face repository it was
        published to, at `revision`): its files alone, no project, params.yaml or caches."""
        return cls(predictor=Predictor(Served.from_export(folder, revision), device=device))

    def __call__(self, image: Image.Image) -> float:
        if not isinstance(image, Image.Image):
            raise InvalidImageError(f"expected a PIL image, got {type(image).__name__}")
        if image.width < 1 or image.height < 1:
            raise InvalidImageError(f"empty image ({image.width}x{image.height})")
        with self._lock:
            try:
                return self.predictor.probability_of(image)
            except ImageTooLargeError as e:
                raise InvalidImageError(f"refused: {e}") from e
            except (ImageDecodeError, OSError, ValueError) as e:
                raise InvalidImageError(f"cannot read the image: {e}") from e
