"""Saving and loading a trained head with everything needed to rebuild and feed it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from roadwork.config import save_json, to_dict
from roadwork.models import build_model
from roadwork.train.config import TrainConfig
from roadwork.train.data import Vocab

CHECKPOINT = "model.pt"


def save_head(
    out_dir: Path,
    *,
    model: nn.Module,
    spec: dict[str, Any],
    vocab: Vocab,
    config: TrainConfig,
    summary: dict[str, Any],
) -> None:
    """`model.pt` (weights + spec + vocab + config) and a readable `config.json` beside it."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {"state": model.state_dict(), "spec": spec, "vocab": vocab.values, "config": to_dict(config)}
    torch.save(payload, out_dir / CHECKPOINT)
    save_json({"spec": spec, "config": to_dict(config), "summary": summary}, out_dir / "config.json")


def load_head(
    head_dir: Path, device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any], Vocab, dict[str, Any]]:
    """The head in eval mode, its spec, its vocabulary and its training config."""
    path = Path(head_dir) / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no trained head")
    payload = torch.load(path, map_location=device, weights_only=True)
    model = build_model(payload["spec"])
    model.load_state_dict(payload["state"])
    return model.to(device).eval(), payload["spec"], Vocab(payload["vocab"]), payload["config"]
