"""A materialised model folder (the `backbone` and `sam` stages): weight dtypes, a fingerprint of the
weights, and the manifest JSON written beside the saved model.

Caches record the manifest's fingerprint and their readers compare it with the folder's, so that
features or masks computed by other weights are refused instead of silently mixed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

MANIFEST = "fingerprint.json"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def weights_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over every parameter and buffer (name, dtype, shape, bytes): which weights were used."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def write_manifest(model_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """`<model_dir>/fingerprint.json`; returns the manifest."""
    (Path(model_dir) / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def read_manifest(model_dir: Path, stage: str) -> dict[str, Any]:
    """The manifest the `stage` stage wrote into `model_dir`."""
    path = Path(model_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no model manifest; run `dvc repro {stage}` first")
    return json.loads(path.read_text())
