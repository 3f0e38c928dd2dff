"""Benchmark of the backbone forward that `extract` runs: views/s, achieved TFLOP/s and MFU.

    python -m bench.backbone                            # tiny backbone of params.yaml, side extract.side
    python -m bench.backbone --full --side 512 --dtype bfloat16 --batches 16 32 64 --compile
                                                        # ViT-H+/16 (840.6M params), random weights:
                                                        # speed does not depend on the weight values
    python -m bench.backbone ... --json out.json        # also write the rows as JSON

FLOPs are counted analytically (2 per multiply-add of every matmul: patch embedding, qkv, attention,
output projection, MLP); `tests/test_bench.py` checks the formula against torch's FlopCounterMode. MFU is
the achieved rate over `--peak-tflops` (the datasheet's dense bf16 figure of an H100/H200 SXM), and
`of_matmul` the achieved rate over a large bf16 matmul measured in the same run (what the chip really
gives on this machine). The forward is `roadwork.features.backbone.pooled_tokens` under SDPA attention.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from roadwork.config import load_params, section
from roadwork.features.backbone import BackboneConfig, build_tiny, pooled_tokens
from roadwork.features.manifest import DTYPES

DATASHEET_TFLOPS = 989.4  # H100 / H200 SXM, dense bf16 tensor-core peak


def vith16plus():
    """The architecture of facebook/dinov3-vith16plus-pretrain-lvd1689m (840.6M parameters)."""
    from transformers import DINOv3ViTConfig

    return DINOv3ViTConfig(
        hidden_size=1280,
        num_hidden_layers=32,
        num_attention_heads=20,
        intermediate_size=5120,
        use_gated_mlp=True,
        hidden_act="silu",
        num_register_tokens=4,
        patch_size=16,
        attn_implementation="sdpa",
    )


def forward_flops(config, side: int) -> float:
    """Matmul FLOPs of one view's forward at `side` x `side` pixels (2 per multiply-add)."""
    d, p = config.hidden_size, config.patch_size
    patches = (side // p) ** 2
    tokens = 1 + config.num_register_tokens + patches
    mlp = (3 if config.use_gated_mlp else 2) * d * config.intermediate_size
    per_layer = tokens * (4 * d * d + mlp) + 2 * tokens * tokens * d  # projections + QK^T and AV
    return 2.0 * (patches * 3 * p * p * d + config.num_hidden_layers * per_layer)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_tflops(device: torch.device, dtype: torch.dtype, n: int, iters: int) -> float:
    """Achieved TFLOP/s of an n x n x n matmul (the practical ceiling of this chip and dtype)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        a @ b
    synchronize(device)
    return 2 * n**3 * iters / (time.perf_counter() - start) / 1e12


@torch.inference_mode()
def time_forward(model, batch: int, side: int, iters: int) -> tuple[float, float]:
    """(median seconds per batch, first-call seconds) of `pooled_tokens` on random pixels."""
    parameter = next(model.parameters())
    pixels = torch.randn(batch, 3, side, side, device=parameter.device, dtype=parameter.dtype)
    start = time.perf_counter()
    pooled_tokens(model, pixels)  # warm-up; with torch.compile this call compiles
    synchronize(parameter.device)
    first = time.perf_counter() - start
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        pooled_tokens(model, pixels)
        synchronize(parameter.device)
        times.append(time.perf_counter() - start)
    return float(np.median(times)), first


def measure(model, *, batch: int, side: int, iters: int, flops: float, peaks: tuple[float, float]) -> dict:
    """One row: views/s, TFLOP/s, MFU (datasheet) and share of the measured matmul rate."""
    device = next(model.parameters()).device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds, first = time_forward(model, batch, side, iters)
    achieved = flops * batch / seconds / 1e12
    return {
        "batch": batch,
        "views_per_s": batch / seconds,
        "tflops": achieved,
        "mfu": achieved / peaks[0],
        "of_matmul": achieved / peaks[1],
        "first_call_s": first,
        "peak_memory_gb": torch.cuda.max_memory_allocated() / 1e9 if device.type == "cuda" else None,
    }


def build_model(args: argparse.Namespace, device: torch.device):
    """ViT-H+/16 (--full) or the tiny backbone of params.yaml, random weights, on `device`."""
    from transformers import DINOv3ViTModel

    if args.full:
        torch.manual_seed(0)
        with torch.device(device):
            model = DINOv3ViTModel(vith16plus())
    else:
        model = build_tiny(section(BackboneConfig, load_params(), "backbone").tiny)
    return model.to(device, DTYPES[args.dtype]).eval().requires_grad_(False)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--full", action="store_true", help="ViT-H+/16 instead of the tiny backbone")
    parser.add_argument("--side", type=int, default=0, help="view side in pixels (0: extract.side)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 64], help="batch sizes to sweep")
    parser.add_argument("--iters", type=int, default=5, help="timed forwards per batch size")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile at the largest batch")
    parser.add_argument("--peak-tflops", type=float, default=DATASHEET_TFLOPS, help="MFU denominator")
    parser.add_argument("--matmul", type=int, default=8192, help="side of the reference matmul")
    parser.add_argument("--json", type=Path, help="write the result here")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    side = args.side or int(load_params()["extract"]["side"])
    model = build_model(args, device)
    flops = forward_flops(model.config, side)
    peak = matmul_tflops(device, DTYPES[args.dtype], args.matmul, 10 if device.type == "cuda" else 1)
    name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu"
    result = {
        "device": name,
        "torch": torch.__version__,
        "model": "vith16plus" if args.full else "tiny",
        "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "side": side,
        "dtype": args.dtype,
        "gflop_per_view": flops / 1e9,
        "matmul_tflops": peak,
        "eager": [],
        "compiled": [],
    }
    print(f"{result['model']} ({result['parameters_m']:.1f}M params) at {side} px, {args.dtype}, {name}")
    print(f"{flops / 1e9:.1f} GFLOP per view; {args.matmul}^3 matmul: {peak:.1f} TFLOP/s")
    peaks = (args.peak_tflops, peak)
    for batch in args.batches:
        result["eager"].append(
            measure(model, batch=batch, side=side, iters=args.iters, flops=flops, peaks=peaks)
        )
    if args.compile:
        compiled = torch.compile(model)
        batch = max(args.batches)
        result["compiled"].append(
            measure(compiled, batch=batch, side=side, iters=args.iters, flops=flops, peaks=peaks)
        )
    for kind in ("eager", "compiled"):
        for row in result[kind]:
            print(
                f"{kind:8} batch {row['batch']:4}: {row['views_per_s']:9.1f} views/s, "
                f"{row['tflops']:7.1f} TFLOP/s, MFU {row['mfu']:.1%}, {row['of_matmul']:.1%} of the matmul, "
                f"first call {row['first_call_s']:.1f} s"
            )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
