"""GPU JPEG decode (nvJPEG, through torchvision) against the CPU decoders, on full-size generator JPEGs.

    python -m bench.jpeg_gpu make DIR --images 8    # write the JPEGs and their view boxes (project needed)
    python -m bench.jpeg_gpu run DIR [--json OUT]   # time them; needs only torch, torchvision and PIL

`run` times, per image (medians over the images and repeats):
    pil          PIL decode at full resolution, one thread (the floor of the CPU path)
    pil_reduced  PIL decode at the reduction `extract` uses at side 512 (1/2 for 12 MP, 1/1 for 1080p)
    tv_cpu       torchvision.io.decode_jpeg on the CPU, one thread
    tv_cuda      torchvision.io.decode_jpeg on the GPU in batches of --batch images (nvJPEG), from host
                 bytes to device pixels
    tv_cuda_views  the same plus the 12 views cut and resized to 512 on the GPU (antialiased bilinear)
The GPU rows are images per second of one process feeding one GPU; the CPU rows are per core.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torchvision.io import decode_jpeg

SIDE = 512


def make(out: Path, images: int) -> None:
    """Full-size generator scenes as JPEG files, and the 12 view boxes of each size."""
    from bench.extract import SIZES, VIEWS, jpeg
    from roadwork.views.plan import view_boxes

    out.mkdir(parents=True, exist_ok=True)
    boxes = {}
    for name, (width, height) in SIZES.items():
        boxes[name] = view_boxes(width, height, VIEWS).tolist()
        for seed in range(images):
            (out / f"{name}-{seed:02d}.jpg").write_bytes(jpeg(width, height, seed))
    (out / "boxes.json").write_text(json.dumps(boxes))


def per_image(fn: Callable[[bytes], object], files: list[bytes], repeats: int) -> float:
    """Median milliseconds of fn over the files (after one warm-up pass)."""
    for data in files:
        fn(data)
    times = []
    for _ in range(repeats):
        for data in files:
            start = time.perf_counter()
            fn(data)
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def pil_decode(data: bytes, reduce: int = 1) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    if reduce > 1:
        image.draft("RGB", (image.width // reduce, image.height // reduce))
    image.load()  # decoded pixels in Pillow's memory (no copy out)
    return image


def gpu_views(image: torch.Tensor, boxes: list[list[int]]) -> torch.Tensor:
    """uint8 [3, H, W] on the GPU -> uint8 [12, 3, SIDE, SIDE]: each box resized, antialiased."""
    pixels = image.float()[None]
    views = [
        F.interpolate(pixels[..., y0:y1, x0:x1], size=(SIDE, SIDE), mode="bilinear", antialias=True)
        for x0, y0, x1, y1 in boxes
    ]
    return torch.cat(views).round_().clamp_(0, 255).to(torch.uint8)


def gpu_rate(files: list[bytes], batch: int, repeats: int, boxes: list[list[int]] | None) -> float:
    """Images per second through nvJPEG (and the views, with `boxes`), batches of `batch` images."""
    encoded = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in files]
    batches = [encoded[i : i + batch] for i in range(0, len(encoded), batch)]

    def run() -> None:
        for part in batches:
            images = decode_jpeg(part, device="cuda")
            if boxes is not None:
                for image in images:
                    gpu_views(image, boxes)
        torch.cuda.synchronize()

    run()  # warm-up: nvJPEG handles and kernels
    start = time.perf_counter()
    for _ in range(repeats):
        run()
    return repeats * len(files) / (time.perf_counter() - start)


def measure(folder: Path, batch: int, repeats: int) -> dict:
    torch.set_num_threads(1)
    boxes = json.loads((folder / "boxes.json").read_text())
    rows = []
    for name in sorted(boxes):
        files = [p.read_bytes() for p in sorted(folder.glob(f"{name}-*.jpg"))]
        reduce = 2 if name.startswith("4032") else 1
        row = {
            "image": name,
            "images": len(files),
            "jpeg_mb": round(statistics.mean(len(d) for d in files) / 1e6, 2),
            "pil_ms": per_image(pil_decode, files, repeats),
            "pil_reduced_ms": per_image(lambda d, r=reduce: pil_decode(d, r), files, repeats),
            "tv_cpu_ms": per_image(
                lambda d: decode_jpeg(torch.frombuffer(bytearray(d), dtype=torch.uint8)), files, repeats
            ),
        }
        if torch.cuda.is_available():
            files = files * max(1, 64 // len(files))  # enough images for full batches
            row["tv_cuda_images_per_s"] = gpu_rate(files, batch, repeats, None)
            row["tv_cuda_views_images_per_s"] = gpu_rate(files, batch, repeats, boxes[name])
        rows.append({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()})
        print(json.dumps(rows[-1]), flush=True)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return {
        "device": device,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    made = sub.add_parser("make", help="write full-size generator JPEGs")
    made.add_argument("dir", type=Path)
    made.add_argument("--images", type=int, default=8)
    run = sub.add_parser("run", help="time the decoders on the JPEGs of DIR")
    run.add_argument("dir", type=Path)
    run.add_argument("--batch", type=int, default=32, help="images per nvJPEG call")
    run.add_argument("--repeats", type=int, default=3)
    run.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.command == "make":
        make(args.dir, args.images)
        return
    results = measure(args.dir, args.batch, args.repeats)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
