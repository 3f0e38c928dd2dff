"""A served head as an exported folder holds it: weights in safetensors, the rest as small JSON.

The project saves a trained member as `model.pt` (`roadwork.train.checkpoint.save_head`: weights, spec,
vocabulary, recipe and, for a cross-fitted member, which fold held out each training row). What answers
a query is less: the weights, the spec that rebuilds the model, the vocabulary of its metadata inputs and
the recipe's token set and views. `export_head` writes those as `model.safetensors` + `head.json` (no
pickle, no training rows); `load_served_head` reads either form into the same `SavedHead`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from roadwork.config import from_dict, to_dict
from roadwork.models import build_model
from roadwork.models.folds import FoldMean
from roadwork.train.checkpoint import CHECKPOINT, SavedHead, load_head
from roadwork.train.config import TrainConfig
from roadwork.train.data import Vocab

WEIGHTS = "model.safetensors"
HEAD_JSON = "head.json"
FORMAT = 1  # the layout of head.json; a reader refuses another


def export_head(head: SavedHead, out_dir: Path) -> list[Path]:
    """Write `head` as `model.safetensors` + `head.json` into `out_dir`; returns the files written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # clone: safetensors refuses tensors that share memory, and a state dict may hold views of one buffer
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in head.model.state_dict().items()}
    save_file(state, out_dir / WEIGHTS, metadata={"format": "pt"})
    (out_dir / WEIGHTS).chmod(0o644)  # safetensors writes it private; a published model is read by all
    folds = len(head.model.folds) if isinstance(head.model, FoldMean) else None
    record = {
        "format": FORMAT,
        "name": head.name,
        "spec": head.spec,
        "folds": folds,  # a cross-fitted member: the mean of this many fold models answers
        "vocab": head.vocab.values,
        "config": to_dict(head.config),
    }
    (out_dir / HEAD_JSON).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return [out_dir / WEIGHTS, out_dir / HEAD_JSON]


def load_exported_head(head_dir: Path, device: str | torch.device = "cpu") -> SavedHead:
    """The head `export_head` wrote, in eval mode on `device` (no training rows: `heldout` is empty, so a
    cross-fitted member answers with the mean of its folds, as served)."""
    head_dir = Path(head_dir)
    record = _read_record(head_dir)
    config = from_dict(TrainConfig, record["config"], f"{head_dir / HEAD_JSON} config")
    spec, folds = record["spec"], record["folds"]
    model = FoldMean([build_model(spec) for _ in range(folds)]) if folds else build_model(spec)
    model.load_state_dict(load_file(head_dir / WEIGHTS, device="cpu"))
    model = model.to(device).eval().requires_grad_(False)
    return SavedHead(record["name"], model, spec, Vocab(record["vocab"]), config)


def _read_record(head_dir: Path) -> dict[str, Any]:
    path = head_dir / HEAD_JSON
    if not path.is_file() or not (head_dir / WEIGHTS).is_file():
        raise FileNotFoundError(f"{head_dir}: no exported head ({HEAD_JSON} + {WEIGHTS})")
    record = json.loads(path.read_text())
    if record.get("format") != FORMAT:
        raise ValueError(f"{path}: head format {record.get('format')!r}, this code reads format {FORMAT}")
    return record


def load_served_head(head_dir: Path, device: str | torch.device = "cpu") -> SavedHead:
    """A member's head from a trained project (`model.pt`) or from an exported folder (safetensors)."""
    if (Path(head_dir) / CHECKPOINT).is_file():
        return load_head(head_dir, device)
    return load_exported_head(head_dir, device)
