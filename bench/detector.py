"""Answer latency of the miner's detector on a trained project, and where the time goes.

    python -m bench.detector                       # the project in the current directory, 30 calls each
    python -m bench.detector --export FOLDER       # a `roadwork export` folder instead of the project
    python -m bench.detector --calls 100 --json out.json

Inputs, each a JPEG answered as a StreetVision miner answers a query (`Image.open` of the bytes, then
`RoadworkDetector(image)`: an unloaded JPEG, decoded at the reduced scale its views need): a validator's
224 px challenge (the project's first test crop challenge, or a synthetic scene's centre crop), a
1920x1080 video frame and a 4032x3024 (12 MP) phone photo (synthetic scenes at full scale, JPEG
quality 75 as the validator's native protocol sends them). Per input: p50 / p99 of the answer over
`--calls` calls, and the median of each part of it measured alone (decode; cutting the views; the
backbone over the views; the routed heads and their calibration), and the old path for comparison
(`--reencode` calls: the image re-encoded as PNG and answered from those bytes). Also the time to
refuse a PNG whose header declares more than MAX_PIXELS. Prints a markdown table; `--json` writes it all.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import platform
import struct
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from roadwork.config import load_params, section
from roadwork.data.images import MAX_PIXELS, displayed_size
from roadwork.serve.detector import InvalidImageError, RoadworkDetector
from roadwork.synth.dataset import SynthConfig, frame_size, scene_spec
from roadwork.synth.scene import render_scene
from roadwork.views.crops import decode_source, required_scale, served_views
from roadwork.views.plan import view_boxes

QUALITY = 75  # the validator's JPEG quality


def synthetic_jpeg(config: SynthConfig, *, phone: bool, seed: int) -> bytes:
    """A roadwork scene at full size (1920x1080, or 4032x3024 for a phone photo) as a JPEG."""
    rng = np.random.default_rng(seed)
    spec = scene_spec(config, 1, frame_size(1.0, phone), rng)
    buffer = io.BytesIO()
    Image.fromarray(render_scene(spec, rng).image).save(buffer, "JPEG", quality=QUALITY)
    return buffer.getvalue()


def challenge_jpeg(project: Path, config: SynthConfig) -> tuple[str, bytes]:
    """The project's first 224 px test challenge, or a synthetic scene's centre crop at 224 px."""
    found = sorted((project / "data/challenge/test/crop").glob("*/*.jpg"))
    if found:
        return str(found[0].relative_to(project)), found[0].read_bytes()
    image = Image.open(io.BytesIO(synthetic_jpeg(config, phone=False, seed=0))).convert("RGB")
    side = min(image.size)
    left = (image.width - side) // 2
    buffer = io.BytesIO()
    image.crop((left, 0, left + side, side)).resize((224, 224), Image.BILINEAR).save(
        buffer, "JPEG", quality=QUALITY
    )
    return "synthetic centre crop", buffer.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares `width` x `height` and holds no pixels: it opens, it never decodes."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


def timed(call: Callable[[], Any], n: int) -> np.ndarray:
    """Milliseconds of `n` calls (after one warm-up call)."""
    call()
    out = []
    for _ in range(n):
        start = time.perf_counter()
        call()
        out.append((time.perf_counter() - start) * 1000)
    return np.array(out)


def parts(detector: RoadworkDetector, data: bytes, n: int) -> dict[str, float]:
    """Median milliseconds of each part of an answer, measured alone: decode (at the scale the views
    need, or in full for a small image cut inside its letterbox bands), views (cutting and resizing
    them: `served_views` less the decode), backbone, heads (+ calibration)."""
    predictor = detector.predictor
    rule, side = predictor.views, predictor.extract.side
    size = displayed_size(Image.open(io.BytesIO(data)))
    small = rule.trim_bands and max(size) <= rule.small_side
    scale = 1.0 if small else required_scale(view_boxes(*size, rule), side)
    decode = timed(lambda: decode_source(Image.open(io.BytesIO(data)), min_side_scale=scale), n)
    cut = timed(lambda: served_views(Image.open(io.BytesIO(data)), views=rule, side=side, size=size), n)
    views = served_views(Image.open(io.BytesIO(data)), views=rule, side=side, size=size)
    backbone = timed(lambda: predictor.embed(views), n)
    features = predictor.embed(views)[None]
    heads = timed(lambda: predictor.log_odds(features, [size]), n)
    _, decoded_scale = decode_source(Image.open(io.BytesIO(data)), min_side_scale=scale)
    return {
        "decode_ms": float(np.median(decode)),
        "decode_scale": decoded_scale,
        "views_ms": float(np.median(cut) - np.median(decode)),
        "backbone_ms": float(np.median(backbone)),
        "heads_ms": float(np.median(heads)),
        "route": predictor.route(size).name,
    }


def reencoded(detector: RoadworkDetector, data: bytes) -> float:
    """The answer through the old path: the opened image re-encoded as PNG, answered from those bytes."""
    buffer = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").save(buffer, format="PNG")
    return detector.predictor.probability(buffer.getvalue())


def measure(detector: RoadworkDetector, name: str, data: bytes, args: argparse.Namespace) -> dict[str, Any]:
    """One input's row: size, answer latency percentiles, its parts and the old path's median."""
    answers = timed(lambda: detector(Image.open(io.BytesIO(data))), args.calls)
    row = {
        "input": name,
        "size": list(Image.open(io.BytesIO(data)).size),
        "jpeg_kb": round(len(data) / 1024, 1),
        "p50_ms": float(np.percentile(answers, 50)),
        "p99_ms": float(np.percentile(answers, 99)),
        "calls": args.calls,
        "probability": detector(Image.open(io.BytesIO(data))),
    } | parts(detector, data, max(3, args.calls // 3))
    if args.reencode:
        row["reencode_png_ms"] = float(np.median(timed(lambda: reencoded(detector, data), args.reencode)))
    return row


def refusal(detector: RoadworkDetector, n: int) -> dict[str, Any]:
    """Milliseconds to refuse a PNG declaring just over MAX_PIXELS (from its header: nothing decoded)."""
    width = int(np.sqrt(MAX_PIXELS)) + 1
    data = png_header(width, width)

    def refuse() -> None:
        try:
            detector(Image.open(io.BytesIO(data)))
        except InvalidImageError:
            return
        raise AssertionError("an image over the pixel limit was answered")

    ms = timed(refuse, n)
    return {
        "size": [width, width],
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
    }


def table(result: dict[str, Any]) -> str:
    """The rows as markdown."""
    lines = [
        "| input | size | route | p50 ms | p99 ms | decode ms (scale) | views ms | backbone ms | heads ms "
        "| old path: PNG re-encode ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        old = f"{r['reencode_png_ms']:.0f}" if "reencode_png_ms" in r else "-"
        size = f"{r['size'][0]}x{r['size'][1]}"
        lines.append(
            f"| {r['input']} | {size} | {r['route']} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} "
            f"| {r['decode_ms']:.1f} ({r['decode_scale']:g}) | {r['views_ms']:.1f} | {r['backbone_ms']:.1f} "
            f"| {r['heads_ms']:.1f} | {old} |"
        )
    refused = result["refusal"]
    size = f"{refused['size'][0]}x{refused['size'][1]}"
    lines.append(
        f"\nRefusing a PNG of {size} (over {MAX_PIXELS / 1e6:g} MP, from its header): "
        f"p50 {refused['p50_ms']:.3f} ms, p99 {refused['p99_ms']:.3f} ms."
    )
    m = result["machine"]
    lines.append(
        f"{m['date']}, {m['cpu']}, {m['threads']} torch threads, torch {m['torch']}; {result['served']}."
    )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--project", type=Path, default=Path("."), help="a trained project (default: here)")
    parser.add_argument("--export", type=Path, default=None, help="a `roadwork export` folder instead")
    parser.add_argument("--calls", type=int, default=30, help="answers timed per input")
    parser.add_argument("--reencode", type=int, default=3, help="old-path answers timed per input (0: none)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--json", type=Path, help="write the result here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.calls < 1:
        parser.error("--calls: must be >= 1")
    config = section(SynthConfig, load_params(args.project / "params.yaml"), "synth")
    if args.export:
        detector, served = (
            RoadworkDetector.from_pretrained(args.export, device="cpu"),
            f"export {args.export}",
        )
    else:
        detector, served = RoadworkDetector(args.project, device="cpu"), f"project {args.project.resolve()}"
    source, challenge = challenge_jpeg(args.project, config)
    inputs = {
        "224 px challenge": challenge,
        "1920x1080 frame": synthetic_jpeg(config, phone=False, seed=1),
        "4032x3024 photo": synthetic_jpeg(config, phone=True, seed=2),
    }
    result = {
        "served": served,
        "challenge": source,
        "machine": {
            "date": datetime.date.today().isoformat(),
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "rows": [measure(detector, name, data, args) for name, data in inputs.items()],
        "refusal": refusal(detector, max(10, args.calls)),
    }
    print(table(result), end="")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
