"""Serving: the trained pipeline applied to new images, one roadwork probability per image.

Loads what `submit` chose (its members' heads), the backbone and the view rule, and runs exactly the
pipeline's clean path: decode (EXIF orientation applied), 12 view boxes from the image's own size,
views resized to the extraction side, pooled backbone tokens rounded to float16 as the cache stores
them, each member's head, logits averaged over members. Images without metadata (files, base64) get
NULL metadata, as a StreetVision validator's images do; NATIX parquet rows bring their own. Who answers:
rows with metadata get the model submit chose for its target; an image without metadata gets the route
for its size (`Predictor.route`: a validator's 224 px crops and letterboxes one, images at their own
size another), each chosen and calibrated on the validation challenges of its protocols. Each result
names its `model` (the route). Every input
gets one result, in input order: a failure is an error result in its place. An image that would decode
to more than `roadwork.data.images.MAX_PIXELS` pixels is refused from its header.

What is served (`Served`) comes from a trained project (`Served.of_project`) or from the folder
`roadwork export` writes (`Served.from_export`: no params.yaml, no caches, no DVC). An image may come as
its bytes (`predict`, `probability`) or opened with PIL (`probability_of`): the same JPEG gives the same
answer either way, decoded at the same reduced scale.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from PIL import Image

from roadwork.config import from_dict, load_paths, section, subset
from roadwork.data.images import ImageDecodeError, ShardReader, displayed_size
from roadwork.data.ingest import IngestConfig, IngestError, IngestResult, ingest
from roadwork.device import resolve_device
from roadwork.ensemble.calibrate import Calibration
from roadwork.ensemble.submit import read_choice
from roadwork.features.backbone import BackboneDtype, load_backbone
from roadwork.features.cache import CacheKey
from roadwork.features.extract import embed_views
from roadwork.features.manifest import DTYPES
from roadwork.features.text import embed_texts, load_encoder
from roadwork.metrics import sigmoid
from roadwork.serve.heads import load_served_head
from roadwork.train.data import metadata_arrays, null_metadata
from roadwork.views.crops import Source, served_views
from roadwork.views.plan import ViewsConfig

SERVED = ("best_single", "ensemble")  # submit.use values whose predictions `predict` reproduces


@dataclass(frozen=True)
class Route:
    """One of submit's choices as served: which members answer, the probability they are served at, and
    (for images without metadata) the largest longer side it answers."""

    name: str  # natix | validator (rows with metadata), or the route's name (small, large, all)
    members: tuple[str, ...]
    calibration: Calibration
    max_side: int | None = None  # images whose longer side is at most this; None: any size


def served_routes(choice: dict[str, Any], source: Path) -> tuple[Route, list[Route]]:
    """The route for rows with metadata, and the routes for images without it, smallest first (the
    last answers any size), from `ensemble.json`."""
    if "routes" not in choice or not choice["routes"] or choice["routes"][-1]["max_side"] is not None:
        raise ValueError(f"{source}: no routes for images of every size (an older `submit`): run `dvc repro`")
    target = Route(choice["target"], tuple(choice["members"]), Calibration(**choice["calibration"]))
    routes = [
        Route(r["name"], tuple(r["members"]), Calibration(**r["calibration"]), r["max_side"])
        for r in choice["routes"]
    ]
    return target, routes


# The files of an exported folder (`roadwork.serve.export` writes them, `Served.from_export` reads them).
EXPORT_CONFIG = "config.json"  # transformers' config, holding the serving settings under "serving"
EXPORT_CHOICE = "ensemble.json"
EXPORT_HEADS = "heads"
EXPORT_BACKBONE = "backbone"
EXPORT_FORMAT = 1  # the layout of config.json's "serving"; a reader refuses another


@dataclass(frozen=True)
class Served:
    """Everything that answers a query, as files and settings: what `roadwork export` copies."""

    backbone: Path | None  # the saved backbone folder (`from_pretrained`); None: `backbone_id` on the hub
    heads: Path  # <member>/ folders of the saved heads
    choice: dict[str, Any]  # `ensemble.json`: members, routes, calibrations
    extract: CacheKey  # view side and normalisation
    views: ViewsConfig  # the view rule
    dtype: str  # the backbone's weights dtype
    backbone_id: str | None = None  # a public checkpoint's hub id, when there is no folder ...
    revision: str | None = None  # ... and its revision (a commit: the weights the heads were trained on)

    def __post_init__(self) -> None:
        if (self.backbone is None) == (self.backbone_id is None):
            raise ValueError("Served: give the backbone as a folder or as a hub id, exactly one of them")

    @classmethod
    def of_project(cls, params: dict[str, Any]) -> Served:
        """What a trained project serves (`params`: its params.yaml + config.yaml)."""
        paths = load_paths(params)
        return cls(
            backbone=Path(paths.backbone),
            heads=Path(paths.heads),
            choice=read_choice(Path(paths.submission)),
            extract=subset(CacheKey, params, "extract"),
            views=section(ViewsConfig, params, "views"),
            dtype=subset(BackboneDtype, params, "backbone").dtype,
        )

    @classmethod
    def from_export(cls, folder: str | Path, revision: str | None = None) -> Served:
        """What an exported folder (`roadwork export`) serves: its own files only. `folder` may be a
        Hugging Face repository id the folder was published to (fetched at `revision`)."""
        folder = exported_folder(folder, revision)
        path = folder / EXPORT_CONFIG
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found; is {folder} a folder written by `roadwork export`?")
        serving = json.loads(path.read_text()).get("serving")
        if not isinstance(serving, dict):
            raise ValueError(f"{path}: no 'serving' settings; not a folder written by `roadwork export`")
        if serving.get("format") != EXPORT_FORMAT:
            raise ValueError(
                f"{path}: serving format {serving.get('format')!r}; this code reads format {EXPORT_FORMAT}"
            )
        source = serving["backbone"]
        return cls(
            backbone=folder / source["folder"] if "folder" in source else None,
            heads=folder / EXPORT_HEADS,
            choice=json.loads((folder / EXPORT_CHOICE).read_text()),
            extract=from_dict(CacheKey, serving["extract"], f"{path} serving.extract"),
            views=from_dict(ViewsConfig, serving["views"], f"{path} serving.views"),
            dtype=serving["dtype"],
            backbone_id=source.get("hub_id"),
            revision=source.get("revision"),
        )

    def members(self) -> list[str]:
        """Every member any route serves, in first-served order."""
        target, routes = served_routes(self.choice, self.heads)
        return list(dict.fromkeys(target.members + sum((r.members for r in routes), ())))

    def load_backbone(self, device: str | torch.device) -> torch.nn.Module:
        """The backbone in eval mode, frozen: from its folder, or from the hub at the pinned revision."""
        if self.backbone is not None:
            return load_backbone(self.backbone, self.dtype, str(device))
        from transformers import DINOv3ViTModel

        if self.dtype not in DTYPES:
            raise ValueError(f"backbone dtype {self.dtype!r}: expected one of {sorted(DTYPES)}")
        model = DINOv3ViTModel.from_pretrained(
            self.backbone_id, revision=self.revision, dtype=DTYPES[self.dtype]
        )
        return model.to(device).eval().requires_grad_(False)


def exported_folder(name_or_path: str | Path, revision: str | None = None) -> Path:
    """A local exported folder as it is; otherwise a Hugging Face repository id, fetched (at `revision`)
    into the hub's cache."""
    if Path(name_or_path).is_dir():
        return Path(name_or_path)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(name_or_path), revision=revision))
    except Exception as e:  # the hub's errors are many (offline, not found, gated): all mean "no folder"
        raise FileNotFoundError(
            f"{name_or_path}: not a local folder, and not fetched from the Hugging Face hub ({e})"
        ) from e


class Predictor:
    """The chosen ensembles over the backbone; `predict` maps images to roadwork probabilities."""

    def __init__(self, params: dict[str, Any] | Served, device: str = "auto"):
        served = params if isinstance(params, Served) else Served.of_project(params)
        choice = served.choice
        if choice.get("use", "ensemble") not in SERVED:
            raise NotImplementedError(
                f"submit.use={choice['use']!r}; `roadwork predict` serves {sorted(SERVED)} (the DoRA fold "
                "models and TTA are applied by the pipeline's stages only)"
            )
        self.threshold = float(choice["threshold"])
        # Rows with metadata get the target's choice; images without it the route for their size.
        self.target, self.routes = served_routes(choice, served.heads)
        self.device = resolve_device(device)
        self.extract, self.views = served.extract, served.views
        self.backbone = served.load_backbone(self.device)
        self.heads = {name: load_served_head(served.heads / name, self.device) for name in served.members()}
        self._text_encoder = None

    def route(self, size: tuple[int, int]) -> Route:
        """Who answers an image without metadata of `size` (width, height): the first route whose
        `max_side` it fits (a validator's 224 px queries: the small images' route)."""
        return next(r for r in self.routes if r.max_side is None or max(size) <= r.max_side)

    def embed(self, views: np.ndarray) -> np.ndarray:
        """`[V, 3, D]` pooled backbone tokens of one image's views, rounded to float16 like the cache."""
        return embed_views(self.backbone, views, self.extract).astype(np.float16)

    def view_features(self, data: Source) -> tuple[np.ndarray, tuple[int, int]]:
        """`[V, 3, D]` pooled tokens of one image's clean views (ImageTooLargeError over MAX_PIXELS), as
        `features.extract.image_features` embeds them for the challenge stage, and the image's size.
        `data`: the image's bytes or the image opened with PIL (the same views either way)."""
        size = displayed_size(data)
        return self.embed(served_views(data, views=self.views, side=self.extract.side, size=size)), size

    def _text(self, texts: list[str | None]) -> tuple[np.ndarray, np.ndarray]:
        if all(t is None for t in texts):
            return np.zeros((len(texts), 384), np.float32), np.zeros(len(texts), bool)
        if self._text_encoder is None:
            self._text_encoder = load_encoder("cpu")
        return embed_texts(self._text_encoder, texts, batch_size=64)

    @torch.no_grad()
    def logits(self, features: np.ndarray, meta_rows: pl.DataFrame, route: Route) -> np.ndarray:
        """Mean logit of `route`'s members for `features` `[n, V, 3, D]` and their metadata rows."""
        text = self._text(meta_rows["scene_description"].to_list())
        heads = [self.heads[name] for name in route.members]
        return np.mean([h.logits(features, metadata_arrays(meta_rows, h.vocab, text)) for h in heads], axis=0)

    def predict(self, items: list[tuple[str, bytes]]) -> list[dict[str, Any]]:
        """JSON-ready results for (key, image bytes) pairs without metadata, in their order; an error
        result for an item that fails."""
        return self._score(items, null_metadata(len(items)), metadata=False)

    def probability(self, data: bytes) -> float:
        """The served probability of one image's bytes (no metadata); ValueError when it cannot be read."""
        result = self.predict([("image", data)])[0]
        if "error" in result:
            raise ValueError(result["error"])
        return float(result["probability"])

    def probability_of(self, image: Image.Image) -> float:
        """The served probability of an image opened with PIL (no metadata, no re-encoding): `predict`'s
        answer for the same JPEG's bytes. An unloaded JPEG is decoded at reduced scale; ImageDecodeError
        (ImageTooLargeError: refused from its header) when it cannot be read."""
        features, size = self.view_features(image)
        return float(sigmoid(self.log_odds(features[None], [size])[0]))

    def log_odds(self, features: np.ndarray, sizes: Sequence[tuple[int, int]]) -> np.ndarray:
        """Calibrated float64 log-odds `[n]` of images without metadata, given as pooled tokens
        `[n, V, 3, D]` and their sizes (which pick the route): sigmoid of it is the served probability,
        computed as `predict` computes it."""
        out = np.empty(len(features), dtype=np.float64)
        by_route: dict[Route, list[int]] = {}
        for k, size in enumerate(sizes):
            by_route.setdefault(self.route(tuple(size)), []).append(k)
        for route, rows in by_route.items():
            logit = self.logits(features[rows], null_metadata(len(rows)), route)
            out[rows] = calibrated_log_odds(route.calibration, logit)
        return out

    def _score(
        self, items: list[tuple[Any, bytes]], meta_rows: pl.DataFrame, *, metadata: bool
    ) -> list[dict[str, Any]]:
        """One result per (id, bytes) item with its metadata row: scored, or the error that stopped it.
        Rows with `metadata` go to the target's choice, images without it by their size (`route`)."""
        results: list[dict[str, Any]] = []
        ok: dict[Route, list[tuple[int, np.ndarray]]] = {}
        for k, (key, data) in enumerate(items):
            try:
                features, size = self.view_features(data)
                ok.setdefault(self.target if metadata else self.route(size), []).append((k, features))
                results.append({"id": key})
            except (ImageDecodeError, OSError, ValueError) as e:
                results.append({"id": key, "error": f"{type(e).__name__}: {e}"})
        for route, scored in ok.items():
            features = np.stack([f for _, f in scored])
            logit = self.logits(features, meta_rows[[k for k, _ in scored]], route)
            for (k, _), value in zip(scored, logit, strict=True):
                prob = float(sigmoid(calibrated_log_odds(route.calibration, value)))
                results[k] |= {"probability": prob, "label": int(prob > self.threshold), "model": route.name}
        return results

    def predict_parquet(self, path: Path, batch: int = 32) -> Iterator[dict[str, Any]]:
        """One result per row of a NATIX-schema parquet file, in row order, validated by the real
        ingest: a quarantined row is an error naming its faults, a duplicate row gets the answer of its
        first copy, a repaired row lists its NULLed fields. A file ingest cannot read is one error."""
        with tempfile.TemporaryDirectory() as tmp:
            link = Path(tmp) / "predict-00000-of-00001.parquet"
            link.symlink_to(Path(path).resolve())
            config = IngestConfig(labelled_splits=(), gps_cell_deg=0.01, workers=1)
            try:
                result = ingest(Path(tmp), config, require_rows=False)
            except IngestError as e:  # the message names the link: name the file as given instead
                yield {"id": str(path), "error": f"IngestError: {str(e).replace(str(link), str(path))}"}
                return
            yield from self._parquet_rows(result, ShardReader(Path(tmp)), batch)

    def _parquet_rows(
        self, result: IngestResult, reader: ShardReader, batch: int
    ) -> Iterator[dict[str, Any]]:
        """Results of an ingested single-shard file, in row order, `batch` indexed rows per forward pass."""
        outcome = _row_outcomes(result)
        index = {r["row"]: r for r in result.index.iter_rows(named=True)}
        answers: dict[str, dict[str, Any]] = {}  # image_id -> the scores of its first copy
        pending: list[int] = []  # rows waiting for the next forward pass, in row order
        for row in range(len(outcome)):
            pending.append(row)
            if sum(r in index for r in pending) < batch and row < len(outcome) - 1:
                continue
            kept = [index[r] for r in pending if r in index]
            items = [(r["image_id"], reader.read(r["shard"], r["row"])) for r in kept]
            for scored in self._score(items, pl.DataFrame(kept, schema=result.index.schema), metadata=True):
                answers[scored.pop("id")] = scored
            for r in pending:  # a duplicate comes after its first copy (ingest keeps the first): answered
                out = outcome[r]
                yield out | answers[out["image_id"]] if "image_id" in out else out
            pending = []


def calibrated_log_odds(calibration: Calibration, logit: Any) -> np.ndarray:
    """The served log-odds of ensemble logits: `calibration.probability` is sigmoid of it (the same
    float64 arithmetic, so the probability is the same to the last bit)."""
    return calibration.slope * (np.asarray(logit, dtype=np.float64) - calibration.threshold)


def _row_outcomes(result: IngestResult) -> list[dict[str, Any]]:
    """Per raw row of a single-shard ingest: its id and row, and either the error that quarantined it
    or the image_id whose answer it gets (with its repairs, if any)."""
    outcome: dict[int, dict[str, Any]] = {}
    for r in result.index.iter_rows(named=True):
        outcome[r["row"]] = {"id": r["source_id"], "row": r["row"], "image_id": r["image_id"]}
    for r in result.collapsed.iter_rows(named=True):
        outcome[r["row"]] = {"id": r["source_id"], "row": r["row"], "image_id": r["image_id"]}
    for r in result.repairs.iter_rows(named=True):
        outcome[r["row"]].setdefault("repaired", []).append(f"{r['field']}: {r['reason']}")
    for r in result.quarantine.iter_rows(named=True):
        fault = f"{r['field']}: {r['reason']} ({r['detail']})"
        error = outcome.setdefault(r["row"], {"id": r["source_id"], "row": r["row"], "error": None})
        error["error"] = fault if error["error"] is None else f"{error['error']}; {fault}"
    if sorted(outcome) != list(range(result.metrics["rows_read"])):  # ingest accounts for every row
        raise RuntimeError(f"ingest answered rows {sorted(outcome)} of {result.metrics['rows_read']}")
    return [outcome[row] for row in range(len(outcome))]
