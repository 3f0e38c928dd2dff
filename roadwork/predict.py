"""Serving: the trained pipeline applied to new images, one roadwork probability per image.

Loads what `submit` chose (its members' heads), the backbone and the view rule, and runs exactly the
pipeline's clean path: decode (EXIF orientation applied), 12 view boxes from the image's own size,
views resized to the extraction side, pooled backbone tokens rounded to float16 as the cache stores
them, each member's head, logits averaged over members. Images without metadata (files, base64) get
NULL metadata, as a StreetVision validator's images do; NATIX parquet rows bring their own.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from roadwork.config import load_paths, section
from roadwork.data.images import ImageDecodeError, ShardReader, displayed_size
from roadwork.data.ingest import IngestConfig, ingest
from roadwork.device import resolve_device
from roadwork.ensemble.submit import read_choice
from roadwork.features.backbone import BackboneConfig, load_backbone
from roadwork.features.cache import ExtractConfig
from roadwork.features.extract import embed_views
from roadwork.features.text import embed_texts, load_encoder
from roadwork.metrics import sigmoid
from roadwork.train.checkpoint import load_head
from roadwork.train.data import metadata_arrays
from roadwork.views.crops import load_views
from roadwork.views.plan import ViewsConfig, view_boxes

SERVED = ("best_single", "ensemble")  # submit.use values whose predictions `predict` reproduces


class Predictor:
    """The chosen ensemble over the backbone; `probabilities` maps images to roadwork probabilities."""

    def __init__(self, params: dict[str, Any], device: str = "auto"):
        paths = load_paths(params)
        choice = read_choice(Path(paths.submission))
        if choice.get("use", "ensemble") not in SERVED:
            raise NotImplementedError(
                f"{paths.submission}: submit.use={choice['use']!r}; `roadwork predict` serves "
                f"{sorted(SERVED)} (the DoRA fold models and TTA are applied by the pipeline's stages only)"
            )
        self.threshold = float(choice["threshold"])
        self.device = resolve_device(device)
        self.extract = section(ExtractConfig, params, "extract")
        self.views = section(ViewsConfig, params, "views")
        backbone = section(BackboneConfig, params, "backbone")
        self.backbone = load_backbone(Path(paths.backbone), backbone.dtype, self.device)
        self.members = [load_head(Path(paths.heads) / name, self.device) for name in choice["members"]]
        self._text_encoder = None

    def view_features(self, data: bytes) -> np.ndarray:
        """`[V, 3, D]` pooled tokens of one image's clean views, rounded to float16 like the cache."""
        size = displayed_size(data)
        views = load_views(data, view_boxes(*size, self.views), self.extract.side, size=size)
        return embed_views(self.backbone, views, self.extract).astype(np.float16)

    def _text(self, texts: list[str | None]) -> tuple[np.ndarray, np.ndarray]:
        if all(t is None for t in texts):
            return np.zeros((len(texts), 384), np.float32), np.zeros(len(texts), bool)
        if self._text_encoder is None:
            self._text_encoder = load_encoder("cpu")
        return embed_texts(self._text_encoder, texts, batch_size=64)

    @torch.no_grad()
    def logits(self, features: np.ndarray, meta_rows: pl.DataFrame) -> np.ndarray:
        """Mean member logit for `features` `[n, V, 3, D]` and their metadata rows (index schema)."""
        text = self._text(meta_rows["scene_description"].to_list())
        out = []
        for member in self.members:
            batch = {"views": torch.from_numpy(member.view_features(features).astype(np.float32))}
            batch |= {
                k: torch.from_numpy(v) for k, v in metadata_arrays(meta_rows, member.vocab, text).items()
            }
            logits = member.model({k: v.to(self.device) for k, v in batch.items()})["logits"].float().cpu()
            out.append((logits[:, 1] - logits[:, 0]).numpy())
        return np.mean(out, axis=0)

    def predict(self, items: list[tuple[str, bytes]]) -> list[dict[str, Any]]:
        """JSON-ready results for (key, image bytes) pairs without metadata; errors per item."""
        results: list[dict[str, Any]] = []
        ok: list[tuple[int, np.ndarray]] = []
        for k, (key, data) in enumerate(items):
            try:
                ok.append((k, self.view_features(data)))
                results.append({"id": key})
            except (ImageDecodeError, OSError, ValueError) as e:
                results.append({"id": key, "error": f"{type(e).__name__}: {e}"})
        if ok:
            logit = self.logits(np.stack([f for _, f in ok]), null_metadata(len(ok)))
            for (k, _), value in zip(ok, logit, strict=True):
                results[k] |= self._scored(value)
        return results

    def predict_parquet(self, path: Path) -> Iterator[dict[str, Any]]:
        """Rows of a NATIX-schema parquet file, validated by the real ingest; bad rows become errors."""
        with tempfile.TemporaryDirectory() as tmp:
            link = Path(tmp) / "predict-00000-of-00001.parquet"
            link.symlink_to(Path(path).resolve())
            result = ingest(Path(tmp), IngestConfig(labelled_splits=(), gps_cell_deg=0.01, workers=1))
            for bad in result.quarantine.iter_rows(named=True):
                yield {"id": bad["source_id"], "row": bad["row"], "error": f"{bad['field']}: {bad['reason']}"}
            reader = ShardReader(Path(tmp))
            rows = result.index
            features = np.stack(
                [self.view_features(reader.read(r["shard"], r["row"])) for r in rows.iter_rows(named=True)]
            )
            for row, value in zip(rows.iter_rows(named=True), self.logits(features, rows), strict=True):
                yield {"id": row["source_id"], "image_id": row["image_id"], **self._scored(value)}

    def _scored(self, logit: float) -> dict[str, Any]:
        prob = float(sigmoid(logit))
        return {"probability": prob, "label": int(prob > self.threshold)}


def null_metadata(n: int) -> pl.DataFrame:
    """Index-schema metadata columns, all NULL (images that arrive without any)."""
    return pl.DataFrame(
        {
            "lat": [None] * n,
            "lon": [None] * n,
            "weather": [[] for _ in range(n)],
            "daytime": [None] * n,
            "scene_environment": [None] * n,
            "scene_description": [None] * n,
        },
        schema={
            "lat": pl.Float64,
            "lon": pl.Float64,
            "weather": pl.List(pl.String),
            "daytime": pl.String,
            "scene_environment": pl.String,
            "scene_description": pl.String,
        },
    )
