"""The served model as transformers classes, so that an exported folder loads with

    pipeline("image-classification", model=FOLDER, trust_remote_code=True)

`roadwork export` saves this file into the folder (transformers' remote code: `auto_map` in
`config.json` and `preprocessor_config.json`, `custom_pipelines` for the pipeline) and the classes import
the installed `roadwork` package's serving modules, never its training loop:

- `RoadworkImageProcessor` cuts an image's served views (`roadwork.views.crops.served_views`: the same
  boxes and the same reduced-scale JPEG decode as `roadwork predict`) and passes the image's displayed
  size, which picks the route (small validator queries and full-size images are answered by different
  members);
- `RoadworkForImageClassification` embeds the views with the frozen backbone and runs the route's
  heads: logits `[B, 2]` = [0, calibrated log-odds], so softmax[:, 1] is the served probability exactly;
- `RoadworkImageClassificationPipeline` is transformers' image classification pipeline, except that it
  hands the processor the image as given: the stock one decodes every image at full size and converts
  it to RGB first (seconds for a 12 MP photo, and other pixels than `roadwork predict` reads).

Labels: 0 "None", 1 "Roadwork" (the base miner reads the "Roadwork" score).
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature
from transformers.modeling_outputs import ImageClassifierOutput
from transformers.pipelines import ImageClassificationPipeline

from roadwork.data.images import displayed_size
from roadwork.serve.predictor import Predictor, Served, exported_folder
from roadwork.views.crops import served_views
from roadwork.views.plan import ViewsConfig

LABELS = {0: "None", 1: "Roadwork"}
TASK = "image-classification"


class RoadworkConfig(PreTrainedConfig):
    """transformers' config of an exported model; `serving` holds the view rule, the extraction
    settings, the backbone's dtype and where the backbone is (`roadwork.serve.predictor.Served`)."""

    model_type = "roadwork"

    def __init__(self, serving: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self.serving = serving or {}
        kwargs.setdefault("id2label", dict(LABELS))
        kwargs.setdefault("label2id", {label: k for k, label in LABELS.items()})
        super().__init__(**kwargs)


class RoadworkImageProcessor(BaseImageProcessor):
    """PIL images -> their served views, uint8 `[B, V, side, side, 3]` (`pixel_values`), and their
    displayed sizes `[B, 2]` (`image_size`: width, height)."""

    model_input_names: ClassVar[list[str]] = ["pixel_values", "image_size"]

    def __init__(self, views: dict[str, Any] | None = None, side: int = 224, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.views = dict(views or {})
        self.side = int(side)

    def preprocess(self, images: Any, return_tensors: str | None = None, **kwargs: Any) -> BatchFeature:
        """The views of one image or a list of them: PIL images (loaded or not: an unloaded JPEG is
        decoded at the reduced scale its views need) or their encoded bytes."""
        batch = images if isinstance(images, list | tuple) else [images]
        rule = ViewsConfig(**self.views)
        pixels, sizes = [], []
        for image in batch:
            if not isinstance(image, Image.Image | bytes):
                raise TypeError(
                    f"RoadworkImageProcessor: expected PIL images or bytes, got {type(image).__name__}"
                )
            size = displayed_size(image)
            pixels.append(served_views(image, views=rule, side=self.side, size=size))
            sizes.append(size)
        data = {"pixel_values": np.stack(pixels), "image_size": np.array(sizes, dtype=np.int64)}
        return BatchFeature(data=data, tensor_type=return_tensors)


class RoadworkForImageClassification(PreTrainedModel):
    """The served model: backbone + the routes' heads, loaded from an exported folder (its heads and
    backbone are in the roadwork layout, not in one `model.safetensors`: `from_pretrained` reads them)."""

    config_class = RoadworkConfig
    main_input_name = "pixel_values"
    base_model_prefix = "roadwork"

    def __init__(self, config: RoadworkConfig, predictor: Predictor | None = None) -> None:
        super().__init__(config)
        self.post_init()  # before the trained modules are attached: it may initialise weights
        self.predictor = predictor
        if predictor is not None:
            # Registered as submodules so that `.to(device)` (the pipeline's) moves them; the predictor
            # reads their device from their parameters.
            self.backbone = predictor.backbone
            self.heads = nn.ModuleList(h.model for h in predictor.heads.values())

    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls, pretrained_model_name_or_path: str | Path, *args: Any, config: Any = None, **kwargs: Any
    ) -> RoadworkForImageClassification:
        """The model of an exported folder (or the Hugging Face repository it was published to)."""
        folder = exported_folder(pretrained_model_name_or_path, kwargs.get("revision"))
        device = kwargs.get("device_map")
        device = str(device) if isinstance(device, str | torch.device) else "cpu"
        if not isinstance(config, RoadworkConfig):
            config = RoadworkConfig.from_pretrained(folder)
        return cls(config, Predictor(Served.from_export(folder), device=device)).eval()

    def forward(
        self, pixel_values: torch.Tensor, image_size: torch.Tensor, **kwargs: Any
    ) -> ImageClassifierOutput:
        """Logits `[B, 2]`, float64: [0, served log-odds] per image."""
        if self.predictor is None:
            raise RuntimeError("RoadworkForImageClassification: load it with from_pretrained(FOLDER)")
        views = pixel_values.detach().cpu().numpy()
        features = np.stack([self.predictor.embed(v) for v in views])
        sizes = [(int(w), int(h)) for w, h in image_size.detach().cpu().tolist()]
        log_odds = torch.from_numpy(self.predictor.log_odds(features, sizes))
        return ImageClassifierOutput(logits=torch.stack([torch.zeros_like(log_odds), log_odds], dim=1))


class RoadworkImageClassificationPipeline(ImageClassificationPipeline):
    """transformers' image classification pipeline, handing the processor the image as given (a path,
    base64 text or URL opened, not decoded): the stock one decodes every image at full size first."""

    def preprocess(self, image: Any, timeout: float | None = None) -> BatchFeature:
        if isinstance(image, str) and not image.startswith(("http://", "https://")):
            image = _open_text(image)
        elif not isinstance(image, Image.Image | bytes | np.ndarray | torch.Tensor):
            return super().preprocess(image, timeout=timeout)  # a URL: transformers fetches it
        if isinstance(image, np.ndarray | torch.Tensor):
            image = Image.fromarray(np.asarray(image, dtype=np.uint8))
        return self.image_processor(images=image, return_tensors="pt")


def _open_text(text: str) -> Image.Image:
    """An image given as text: a local path, or base64 (a data URI too), opened without decoding."""
    if Path(text).is_file():
        return Image.open(text)
    payload = text.split(",", 1)[1] if text.startswith("data:image/") else text
    return Image.open(io.BytesIO(base64.b64decode(payload, validate=True)))


def custom_pipelines() -> dict[str, Any]:
    """The `custom_pipelines` entry of `config.json`: `pipeline(TASK, trust_remote_code=True)` builds
    `RoadworkImageClassificationPipeline` from the saved copy of this file."""
    impl = f"{__name__.rsplit('.', 1)[-1]}.{RoadworkImageClassificationPipeline.__name__}"
    return {TASK: {"impl": impl, "pt": ["AutoModelForImageClassification"], "tf": [], "type": "image"}}
