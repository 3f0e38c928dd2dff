"""A trained head on disk and in memory: weights, spec, vocabulary and recipe, and how to feed it.

`save_head` writes `model.pt` (everything needed to rebuild the head) and a readable `config.json`;
`load_head` gives back a `SavedHead`, the one typed view of a trained member that DoRA, TTA, the
report and `roadwork predict` all use. A cross-fitted member is saved as its `FoldMean` with the fold
that held out each labelled train row (`SavedHead.heldout`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from torch import nn

from roadwork.config import ConfigError, from_dict, save_json, to_dict
from roadwork.features.cache import FeatureCache
from roadwork.features.text import read_text
from roadwork.models import build_model
from roadwork.models.folds import FoldMean
from roadwork.train.config import TrainConfig
from roadwork.train.data import Table, Vocab, load_table, view_features

CHECKPOINT = "model.pt"


@dataclass
class SavedHead:
    """A trained member's head (eval mode), its model spec, vocabulary and training recipe."""

    name: str  # the member (the head's folder name)
    model: nn.Module
    spec: dict[str, Any]  # what `roadwork.models.build_model` built it from
    vocab: Vocab  # categorical metadata vocabulary of its training rows
    config: TrainConfig  # the recipe it was trained with
    heldout: dict[str, int] = field(default_factory=dict)  # cross-fitted: image_id -> fold holding it out

    @property
    def is_full_head(self) -> bool:
        """The full head (attention layers, embedding, view gates), not the MLP baseline."""
        return self.spec["model"] == "head"

    @property
    def views(self) -> list[int] | None:
        """The views it reads: None for all, [0] for the global view alone."""
        return [0] if self.config.views == "global" else None

    def table(self, rows: pl.DataFrame, *, cache: FeatureCache, text_path: Path) -> Table:
        """Its input Table for index `rows`, from the feature and text caches (clean and augmented copies)."""
        text = read_text(text_path, rows["image_id"].to_list())
        table = load_table(rows, cache=cache, text=text, vocab=self.vocab, config=self.config)
        table.fold = self.folds_of(table.image_id)
        return table

    def folds_of(self, image_ids: list[str]) -> np.ndarray | None:
        """Cross-fitted: the fold model that held out each image (-1: none, the mean answers); else None."""
        if not self.heldout:
            return None
        return np.array([self.heldout.get(i, -1) for i in image_ids], dtype=np.int64)

    def view_features(self, tokens: np.ndarray) -> np.ndarray:
        """Its view features `[n, V', T*D]` from all pooled tokens `[n, V, 3, D]`."""
        return view_features(tokens, self.config)

    @torch.no_grad()
    def logits(
        self, tokens: np.ndarray, meta: dict[str, np.ndarray], folds: np.ndarray | None = None
    ) -> np.ndarray:
        """Roadwork log-odds `[n]` of images given as pooled tokens `[n, V, 3, D]` and their metadata
        arrays (`metadata_arrays` with this head's vocabulary). `folds` (cross-fitted members): per row,
        the fold model that answers it (-1: the mean of all, as served); `folds_of` gives the fold that
        held out a labelled train row, and fold 0 held out the validation rows."""
        device = next(self.model.parameters()).device
        batch = {"views": torch.from_numpy(self.view_features(tokens).astype(np.float32))}
        batch |= {k: torch.from_numpy(v) for k, v in meta.items()}
        if folds is not None and self.heldout:
            batch["fold"] = torch.from_numpy(np.asarray(folds, dtype=np.int64))
        pair = self.model({k: v.to(device) for k, v in batch.items()})["logits"].float().cpu()
        return (pair[:, 1] - pair[:, 0]).numpy()


def save_head(
    out_dir: Path,
    *,
    model: nn.Module,
    spec: dict[str, Any],
    vocab: Vocab,
    config: TrainConfig,
    summary: dict[str, Any],
    heldout: dict[str, int] | None = None,
) -> None:
    """`model.pt` (weights + spec + vocab + config; a `FoldMean` with `heldout`, the fold that held out
    each labelled train row) and a readable `config.json` beside it."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {"state": model.state_dict(), "spec": spec, "vocab": vocab.values, "config": to_dict(config)}
    if isinstance(model, FoldMean):
        if not heldout:
            raise ValueError(f"{out_dir}: a cross-fitted member needs the fold of each row it held out")
        payload["folds"] = len(model.folds)
        payload["heldout"] = {"image_id": list(heldout), "fold": list(heldout.values())}
    torch.save(payload, out_dir / CHECKPOINT)
    save_json({"spec": spec, "config": to_dict(config), "summary": summary}, out_dir / "config.json")


def load_head(head_dir: Path, device: str | torch.device = "cpu") -> SavedHead:
    """The saved head in eval mode on `device`; a checkpoint whose recipe no longer parses is refused."""
    path = Path(head_dir) / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no trained head")
    payload = torch.load(path, map_location=device, weights_only=True)
    try:
        config = from_dict(TrainConfig, payload["config"], f"{path} config")
    except ConfigError as e:
        raise ConfigError(f"{e}; the head predates the current code: re-run its train stage") from e
    folds = payload.get("folds")
    spec = payload["spec"]
    model = FoldMean([build_model(spec) for _ in range(folds)]) if folds else build_model(spec)
    model.load_state_dict(payload["state"])
    model = model.to(device).eval()
    held = payload.get("heldout", {"image_id": [], "fold": []})
    heldout = dict(zip(held["image_id"], held["fold"], strict=True))
    return SavedHead(Path(head_dir).name, model, spec, Vocab(payload["vocab"]), config, heldout)
