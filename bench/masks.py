"""Benchmark of the `masks` stage: images per second, and what each extra text prompt costs.

    python -m bench.masks                  # tiny SAM 3 of params.yaml (masks.tiny), on masks.device
    python -m bench.masks --images 64      # more images for the end-to-end stage timing
    python -m bench.masks --full           # also a full-size SAM 3 (Sam3Config(), random weights:
                                           # speed does not depend on the weight values); meant for a GPU
    python -m bench.masks --memory 500 2000  # peak RSS of the stage over N generated 1920x1080 images

Three measurements:
1. model only, per image: the image encoding (once per image) and the prompt decoding (DETR + mask
   decoder + post-processing) for 1, 3 and 6 prompts on that shared encoding; the slope is the cost
   of one more prompt. The naive alternative (one full forward per prompt) is derived from the two.
2. the stage end to end (decode + resize in the DataLoader, model, grids, zarr writes) on synthetic
   JPEGs of the real 1920x1080 size written to a temporary parquet shard.
3. with --full, measurement 1 for the real architecture at 1008 px.
With --memory, instead: the stage (tiny SAM 3) over N streamed images in a child process per N, and
its peak RSS (and its DataLoader workers'): with shard-by-shard writes it must not grow with N.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from transformers import Sam3Config, Sam3ImageProcessor, Sam3Model, Sam3Processor

from roadwork.config import load_params, section
from roadwork.device import resolve_device
from roadwork.features.manifest import DTYPES
from roadwork.masks.config import MasksConfig
from roadwork.masks.sam import (
    build_tiny,
    build_tiny_tokenizer,
    decode_prompts,
    encode_prompts,
    input_size,
    union_masks,
)

ROOT = Path(__file__).resolve().parents[1]  # the project: children run as `python -m bench.<name>` here

PROMPT_COUNTS = (1, 3, 6)
FULL_MEMORY_GB = 10  # a full SAM 3 in float32 is 3.4 GB of weights, plus activations at 1008 px


def timed(fn: Callable[[], object], repeats: int, warmup: bool) -> tuple[object, float]:
    """(last result, median seconds) of `fn`, optionally after one untimed warm-up call."""
    if warmup:
        fn()
    times, result = [], None
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return result, float(np.median(times))


def prompts_of(config: MasksConfig, n: int) -> tuple[str, ...]:
    """n prompts: those of the config, then numbered variants of them."""
    base = config.prompts
    return tuple(base[i % len(base)] + (f" {i}" if i >= len(base) else "") for i in range(n))


@torch.inference_mode()
def model_costs(model, processor, config: MasksConfig, batch: int, repeats: int, warmup: bool) -> dict:
    """Seconds per image: the image encoding, and the decoding of P prompts on that shared encoding
    (DETR encoder + decoder, mask decoder, post-processing into one mask per prompt)."""
    parameter = next(model.parameters())
    height, width = input_size(processor)
    pixels = torch.randn(batch, 3, height, width, device=parameter.device, dtype=parameter.dtype)
    vision, seconds = timed(lambda: model.get_vision_features(pixel_values=pixels), repeats, warmup)
    costs = {"encode": seconds / batch}
    for n in PROMPT_COUNTS:
        prompts = encode_prompts(model, processor, prompts_of(config, n))

        def decode(p=prompts):
            outputs = decode_prompts(model, vision, p)
            return union_masks(processor, outputs, config.score_threshold, config.mask_threshold)

        costs[f"decode/{n}"] = timed(decode, repeats, warmup)[1] / batch
    return costs


def report_costs(title: str, costs: dict[str, float]) -> None:
    encode = costs["encode"]
    print(f"\n{title}")
    print(f"  image encoding (once per image)  {encode * 1e3:9.1f} ms / image")
    for n in PROMPT_COUNTS:
        shared = encode + costs[f"decode/{n}"]
        naive = n * (encode + costs["decode/1"])  # what one full forward per prompt would cost
        decode = costs[f"decode/{n}"]
        print(
            f"  {n} prompt(s): decode {decode * 1e3:8.1f} ms, image total {shared * 1e3:8.1f} ms "
            f"({1 / shared:7.3g} images/s); one full forward per prompt would take {naive * 1e3:8.1f} ms"
        )
    slope = (costs["decode/6"] - costs["decode/1"]) / 5
    print(f"  each extra prompt                {slope * 1e3:9.1f} ms / image")


def stage_rate(model, processor, config: MasksConfig, n: int) -> dict[str, float]:
    """The stage end to end on n synthetic full-size images: images per second."""
    from bench.extract import noisy_frames, write_shard
    from roadwork.masks.cache import MaskCache
    from roadwork.masks.fill import fill_masks, plan_jobs
    from roadwork.views.plan import ViewsConfig, boxes_by_image, build_plan

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        index = write_shard(root, noisy_frames(n), n, (1920, 1080))  # streamed: 100 images at a time
        plan = build_plan(index, ViewsConfig(grid=3, overlap=0.25))
        cache = MaskCache.create(root / "masks.zarr", config=config, views=12, attrs={"bench": True})
        jobs = plan_jobs(index, cache, config)
        return fill_masks(
            model=model,
            processor=processor,
            cache=cache,
            jobs=jobs,
            raw_root=root,
            boxes=boxes_by_image(plan),
            config=config,
        )


def memory_child(n: int) -> dict:
    """The stage over n generated 1920x1080 images in this process; peak RSS (MB) of it and its workers."""
    import resource

    from bench.extract import noisy_frames, write_shard
    from roadwork.masks.cache import MaskCache
    from roadwork.masks.fill import fill_masks, plan_jobs
    from roadwork.views.plan import ViewsConfig, boxes_by_image, build_plan

    config = section(MasksConfig, load_params(), "masks")
    model, processor = build_tiny(config.tiny)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        index = write_shard(root, noisy_frames(n), n, (1920, 1080))  # streamed: 100 images at a time
        cache = MaskCache.create(root / "masks.zarr", config=config, views=12, attrs={"bench": True})
        counts = fill_masks(
            model=model.requires_grad_(False),
            processor=processor,
            cache=cache,
            jobs=plan_jobs(index, cache, config),
            raw_root=root,
            boxes=boxes_by_image(build_plan(index, ViewsConfig(grid=3, overlap=0.25))),
            config=config,
        )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"images": n, "peak_rss_mb": round(peak), "worker_peak_rss_mb": round(workers)} | {
        "seconds": counts["seconds"]
    }


def available_gb() -> float:
    """MemAvailable of the machine (Linux), in GB; infinity when unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1e6
    except OSError:
        pass
    return float("inf")


def full_model(device: torch.device, dtype: torch.dtype) -> tuple[Sam3Model, Sam3Processor]:
    """The real SAM 3 architecture (Sam3Config() defaults, 1008 px) with random weights."""
    processor = Sam3Processor(image_processor=Sam3ImageProcessor(), tokenizer=build_tiny_tokenizer())
    torch.manual_seed(0)
    with torch.device(device):
        model = Sam3Model(Sam3Config())
    return model.to(dtype).eval().requires_grad_(False), processor


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=48, help="images for the stage timing (0: skip it)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per model measurement")
    parser.add_argument("--full", action="store_true", help="also time a full-size SAM 3")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--memory", type=int, nargs="+", help="peak RSS of the stage over N images, per N")
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child)))
        return
    if args.memory:
        rows = []
        for n in args.memory:
            child = [sys.executable, "-m", "bench.masks", "--memory-child", str(n)]
            done = subprocess.run(child, check=True, capture_output=True, text=True, cwd=ROOT)
            rows.append(json.loads(done.stdout))
            print(rows[-1], flush=True)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2) + "\n")
        return

    config = section(MasksConfig, load_params(), "masks")
    device = resolve_device(config.device)
    name = (
        torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or platform.machine()
    )
    print(
        f"masks bench: {name}, torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
        f"device {device}"
    )
    result: dict[str, object] = {"device": name, "torch": torch.__version__, "prompts": len(config.prompts)}
    model, processor = build_tiny(config.tiny)
    model = model.to(device, DTYPES[config.dtype]).requires_grad_(False)
    tiny = config.tiny
    title = (
        f"tiny SAM 3 ({sum(p.numel() for p in model.parameters()):,} params, {tiny.image_size} px, "
        f"width {tiny.hidden_size}, {tiny.layers} layers, {tiny.queries} queries), "
        f"batch {config.batch_images}"
    )
    result["tiny"] = model_costs(model, processor, config, config.batch_images, args.repeats, True)
    report_costs(title, result["tiny"])

    if args.images:
        counts = stage_rate(model, processor, config, args.images)
        rate = counts["images"] / max(counts["seconds"], 1e-9)
        result["stage"] = {**counts, "images_per_s": rate}
        print(
            f"\nstage end to end: {counts['images']} images of 1920x1080, {len(config.prompts)} prompts, "
            f"{config.workers} worker(s): {counts['seconds']} s ({rate:.1f} images/s)"
        )
    if args.full:
        result["full"] = full_costs(config, device, args.repeats)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


def full_costs(config: MasksConfig, device: torch.device, repeats: int) -> dict[str, float] | None:
    """Measurement 1 for the real architecture; on the CPU one image, each part timed once."""
    if device.type != "cuda":
        print("\nfull SAM 3: no GPU; a single image on the CPU (float32) - expect minutes, not a GPU figure")
        if available_gb() < FULL_MEMORY_GB:
            print(f"full SAM 3: skipped, {available_gb():.1f} GB available < {FULL_MEMORY_GB} GB needed")
            return None
    gpu = device.type == "cuda"
    dtype = torch.bfloat16 if gpu else torch.float32
    model, processor = full_model(device, dtype)
    batch, repeats = (config.batch_images, repeats) if gpu else (1, 1)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    costs = model_costs(model, processor, config, batch, repeats, warmup=gpu)
    report_costs(f"full SAM 3 ({params:.0f}M params, 1008 px, {dtype}), batch {batch}", costs)
    return {**costs, "batch": batch, "parameters_m": params}


if __name__ == "__main__":
    main()
