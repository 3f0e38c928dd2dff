"""The benchmarks must not rot: they run at a tiny size on the CPU, and their arithmetic is checked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import DINOv3ViTConfig, DINOv3ViTModel

from roadwork.config import load_params, section
from roadwork.features.backbone import BackboneConfig, build_tiny, pooled_tokens

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from backbone import forward_flops, vith16plus  # noqa: E402


@pytest.mark.parametrize("gated", [False, True])
def test_analytic_flops_match_torch_flop_counter(gated: bool) -> None:
    config = DINOv3ViTConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=96,
        num_register_tokens=4,
        use_gated_mlp=gated,
        attn_implementation="eager",  # attention as matmuls, so the counter sees them
    )
    model = DINOv3ViTModel(config).eval()
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        pooled_tokens(model, torch.randn(3, 3, 48, 48))
    assert counter.get_total_flops() == 3 * forward_flops(config, 48)


def test_full_architecture_is_the_840m_vith16plus() -> None:
    with torch.device("meta"):
        model = DINOv3ViTModel(vith16plus())
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 1) == 840.6
    assert forward_flops(model.config, 512) / 1e12 == pytest.approx(1.90, abs=0.01)  # DESIGN's figure


def test_backbone_bench_runs_tiny_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    args = ["--side", "32", "--batches", "1", "2", "--iters", "1", "--matmul", "64", "--json", str(out)]
    subprocess.run([sys.executable, "bench/backbone.py", *args], cwd=ROOT, check=True, capture_output=True)
    result = json.loads(out.read_text())
    assert result["model"] == "tiny" and [row["batch"] for row in result["eager"]] == [1, 2]
    assert all(row["views_per_s"] > 0 and row["tflops"] > 0 for row in result["eager"])
    tiny = build_tiny(section(BackboneConfig, load_params(ROOT / "params.yaml"), "backbone").tiny)
    assert result["gflop_per_view"] * 1e9 == pytest.approx(forward_flops(tiny.config, 32))


def test_masks_bench_runs_tiny_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    args = ["--images", "2", "--repeats", "1", "--json", str(out)]
    subprocess.run([sys.executable, "bench/masks.py", *args], cwd=ROOT, check=True, capture_output=True)
    result = json.loads(out.read_text())
    assert set(result["tiny"]) == {"encode", "decode/1", "decode/3", "decode/6"}
    assert result["stage"]["images"] == 2 and result["stage"]["images_per_s"] > 0


def test_cache_scale_bench_tracks_one_file_per_array_and_shard(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    args = ["--images", "40", "--train", "30", "--dim", "8", "--tta-augs", "2", "--chunk-rows", "4"]
    args += ["--shard-rows", "8", "--repeats", "1", "--json", str(out)]
    subprocess.run([sys.executable, "bench/cache_scale.py", *args], cwd=ROOT, check=True, capture_output=True)
    caches = json.loads(out.read_text())["caches"]
    # Per array: its shards plus its zarr.json; per group one zarr.json. 40 rows in shards of 8 = 5 shards;
    # TTA holds the 10 test rows (2 shards) per augmentation.
    assert caches["files"] == {
        "backbone.zarr": 6 * (5 + 1) + 1,  # cls, patch_mean, patch_max, copies, image_id, done
        "masks.zarr": 5 * (5 + 1) + 1,  # image_mask, view_masks, coverage, image_id, done
        "tta.zarr": 2 * (3 * (2 + 1) + 1) + 1,  # per augmentation: tokens, image_id, done
    }
    assert len(caches["noop_repro_s"]) == 1 and caches["noop_repro_s"][0] > 0


def test_jpeg_bench_runs_on_cpu(tmp_path: Path) -> None:
    folder, out = tmp_path / "jpegs", tmp_path / "jpeg.json"
    bench = [sys.executable, "bench/jpeg_gpu.py"]
    subprocess.run([*bench, "make", str(folder), "--images", "1"], cwd=ROOT, check=True, capture_output=True)
    run = [*bench, "run", str(folder), "--repeats", "1", "--json", str(out)]
    subprocess.run(run, cwd=ROOT, check=True, capture_output=True)
    rows = json.loads(out.read_text())["rows"]
    assert [row["image"] for row in rows] == ["1920x1080", "4032x3024"]
    assert all(row["pil_ms"] > 0 and row["tv_cpu_ms"] > 0 for row in rows)
