"""The peers' recipe (experiments/peers.py): the DINOv3 image classifier, one fine-tuning step on the CPU, and
the saved folder loaded through transformers' image-classification pipeline in a fresh process."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from PIL import Image
from transformers import DINOv3ViTImageProcessor

from experiments.peers import (
    PeerConfig,
    fine_tune,
    pipeline_answer,
    pixels,
    roadwork_probability,
    save_classifier,
    table,
)
from roadwork.features.backbone import TinyBackboneConfig, build_tiny
from roadwork.models.peer import classifier_from_backbone

pytestmark = [pytest.mark.bench, pytest.mark.timeout(600)]  # the peers' recipe: fine-tuning runs

ROOT = Path(__file__).resolve().parents[1]

TINY = TinyBackboneConfig(
    seed=0, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
    num_register_tokens=4, patch_size=16,
)  # fmt: skip


def jpeg(seed: int, size: tuple[int, int] = (320, 240)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def processor() -> DINOv3ViTImageProcessor:
    return DINOv3ViTImageProcessor(size={"height": 224, "width": 224})


def test_classifier_starts_from_the_backbone_and_says_roadwork() -> None:
    backbone = build_tiny(TINY)
    model = classifier_from_backbone(backbone).eval()
    for name, value in backbone.state_dict().items():
        assert torch.equal(model.dinov3.state_dict()[name], value), name
    assert model.config.id2label == {0: "None", 1: "Roadwork"}
    out = model(pixel_values=torch.randn(2, 3, 224, 224), labels=torch.tensor([0, 1]))
    assert out.logits.shape == (2, 2) and out.loss.ndim == 0


def test_one_step_then_the_pipeline_answers_as_the_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, proc = classifier_from_backbone(build_tiny(TINY)), processor()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rows = pl.DataFrame(
        {
            "image_id": [f"i{k}" for k in range(4)],
            "width": [320] * 4,
            "height": [240] * 4,
            "label": [0, 1, 0, 1],
        }
    )
    train = (rows, [jpeg(k) for k in range(4)])
    val = (np.array([0, 1]), [jpeg(10), jpeg(11)])
    log = fine_tune(
        model=model, processor=proc, train=train, val=val, config=PeerConfig(epochs=1, batch=2, steps=1)
    )
    assert log["train_images"] == 2 and log["val_images"] == 2 and len(log["epochs"]) == 1
    assert any(
        not torch.equal(before[k], v) for k, v in model.state_dict().items() if k.startswith("dinov3.")
    )

    save_classifier(model, proc, tmp_path / "model")
    assert json.loads((tmp_path / "model" / "config.json").read_text())["id2label"]["1"] == "Roadwork"
    image = jpeg(20)
    expected = float(roadwork_probability(model.eval(), pixels(proc, [image]))[0])
    assert pipeline_answer(tmp_path / "model")(image) == pytest.approx(expected, abs=1e-5)

    # A fresh process without this project's modules imported: the folder carries the class's code.
    (tmp_path / "image.jpg").write_bytes(image)
    code = (
        "import json, sys\nfrom transformers import pipeline\n"
        f"p = pipeline('image-classification', model={str(tmp_path / 'model')!r}, trust_remote_code=True)\n"
        f"print(json.dumps(p({str(tmp_path / 'image.jpg')!r}, top_k=None)))\n"
        "assert not any(m.startswith('roadwork') for m in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    scores = {s["label"]: s["score"] for s in json.loads(result.stdout.strip().splitlines()[-1])}
    assert scores["Roadwork"] == pytest.approx(expected, abs=1e-5)


def test_table_names_every_side_and_protocol_with_intervals() -> None:
    scores = {"mcc": 0.5, "mcc_lo": 0.4, "mcc_hi": 0.6, "reward": 0.3, "reward_lo": 0.2, "reward_hi": 0.4}
    block = {"all": scores, "domains": {"generated": {"mcc": 0.4}, "real": {"mcc": 0.6}}}  # as scored
    latency = {"crop": {"p50_ms": 12.0, "p99_ms": 30.0}, "native": {"p50_ms": 40.0, "p99_ms": 90.0}}
    challenges = {"protocols": {"crop": block, "native": block}, "latency": {"protocols": latency}}
    side = {"challenges": challenges, "natix_plain": {"mcc": 0.55, "roc_auc": 0.8}}
    results = {
        "ours": side | {"cost": {"passes": 12000, "side": 112, "seconds": 60.0}},
        "peers": side | {"cost": {"passes": 9000, "side": 224, "seconds": 300.0}},
        "average": side,
        "machine": {"date": "2026-11-30", "cpu": "x86_64", "threads": 2, "torch": "2"},
    }
    text = table(results)
    assert sum(line.startswith("| ") for line in text.splitlines()) == 7  # the header, 3 sides x 2 protocols
    assert "| this pipeline (served) | crop | 0.500 [0.40, 0.60] | 0.600 / 0.400 | 0.300 | 0.550" in text
    assert "| 12,000 (112 px) | 60 s | 12 / 30 ms |" in text and "| native |" in text and "40 / 90 ms" in text
    assert "| peers' recipe |" in text and "| average of both |" in text
