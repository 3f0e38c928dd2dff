"""The `roadwork` command."""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple, Protocol, TextIO

from roadwork.config import load_params, load_paths


def summary(args: argparse.Namespace) -> int:
    """Print the final metrics and where each output lives."""
    paths = load_paths(load_params(args.params))
    final_path = Path(paths.submission) / "scores.json"
    if not final_path.is_file():
        print(f"{final_path}: not found; run `dvc repro` first", file=sys.stderr)
        return 1
    final = json.loads(final_path.read_text())
    for part in ("val", "test"):
        scores = final.get(part)
        if scores:
            lo, hi = scores["mcc_lo"], scores["mcc_hi"]
            auc = "n/a" if scores["roc_auc"] is None else f"{scores['roc_auc']:.3f}"
            print(
                f"{part:>5} MCC {scores['mcc']:.3f} (95% CI {lo:.3f}-{hi:.3f}), "
                f"accuracy {scores['accuracy']:.3f}, ROC-AUC {auc}"
            )
    print(f"members chosen: {', '.join(final['chosen'])}")
    print("outputs:")
    for label, path in (
        ("submission", Path(paths.submission) / "submission.csv"),
        ("final metrics", final_path),
        ("trained heads", Path(paths.heads)),
        ("predictions", Path(paths.predictions)),
        ("training logs", Path(paths.live)),
        ("feature cache", Path(paths.features)),
        ("ingest report", Path(paths.metrics) / "ingest.json"),
    ):
        print(f"  {label:<14} {path}")
    return 0


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".mpo", ".webp", ".bmp", ".tif", ".tiff"}


class ImageInput(NamedTuple):
    """An image without metadata: a file or a line of standard input."""

    key: str
    data: bytes


class ParquetInput(NamedTuple):
    """A NATIX-schema parquet file: one result per row."""

    path: Path


class FailedInput(NamedTuple):
    """An input that could not even be read: its error result."""

    record: dict[str, Any]


Input = ImageInput | ParquetInput | FailedInput


class Predicts(Protocol):
    """What `roadwork predict` needs of a model (`roadwork.predict.Predictor`)."""

    def predict(self, items: list[tuple[str, bytes]]) -> list[dict[str, Any]]: ...

    def predict_parquet(self, path: Path, batch: int = 32) -> Iterator[dict[str, Any]]: ...


def _read_file(path: Path) -> Input:
    """The bytes of an image file, or the error that stops reading it (a broken link says so)."""
    try:
        return ImageInput(str(path), path.read_bytes())
    except OSError as e:
        if path.is_symlink() and not path.exists():
            return FailedInput({"id": str(path), "error": f"broken symbolic link to {os.readlink(path)}"})
        return FailedInput({"id": str(path), "error": f"{type(e).__name__}: {e.strerror or e}"})


def _directory(path: Path, stderr: TextIO) -> Iterator[Input]:
    """The image files under `path` by suffix, sorted; the other files are counted on `stderr`."""
    images, skipped = [], 0
    for entry in sorted(path.rglob("*")):
        if entry.suffix.lower() in IMAGE_SUFFIXES and not entry.is_dir():
            images.append(entry)  # a dangling link too: reading it gives its error line
        elif not entry.is_dir():
            skipped += 1
    if skipped:
        print(f"roadwork predict: skipped {skipped} non-image file(s) in {path}/", file=stderr)
    return map(_read_file, images)


def _stdin(stdin: TextIO) -> Iterator[Input]:
    """One base64-encoded image per line (blank lines are not inputs), read as they come."""
    for n, line in enumerate(stdin, start=1):
        if line.strip():
            try:
                yield ImageInput(f"stdin:{n}", base64.b64decode(line.strip(), validate=True))
            except binascii.Error as e:
                yield FailedInput({"id": f"stdin:{n}", "error": f"base64: {e}"})


def read_inputs(inputs: list[str], stdin: TextIO, stderr: TextIO) -> Iterator[Input]:
    """Every input in command-line order, read lazily: files, directory contents (sorted), parquet
    files, standard input ('-')."""
    for raw in inputs:
        path = Path(raw)
        if raw == "-":
            yield from _stdin(stdin)
        elif raw.endswith(".parquet"):
            yield ParquetInput(path) if path.is_file() else _read_file(path)  # the error of a missing file
        elif path.is_dir():
            yield from _directory(path, stderr)
        else:
            yield _read_file(path)


def _flush(predictor: Predicts, pending: list[ImageInput | FailedInput]) -> Iterator[dict[str, Any]]:
    """Results of `pending` (images and failures) in their order; the images in one forward pass."""
    images = [(i.key, i.data) for i in pending if isinstance(i, ImageInput)]
    scored = predictor.predict(images) if images else []
    if len(scored) != len(images):
        raise RuntimeError(f"the predictor answered {len(scored)} of {len(images)} images")
    answers = iter(scored)
    for item in pending:
        yield next(answers) if isinstance(item, ImageInput) else item.record


def results_in_order(predictor: Predicts, inputs: Iterable[Input], batch: int) -> Iterator[dict[str, Any]]:
    """One result per input, in input order; images are scored `batch` at a time, failures keep their
    place, and a parquet file's rows follow in row order."""
    pending: list[ImageInput | FailedInput] = []  # waiting for the next forward pass, in order
    images = 0
    for item in inputs:
        if isinstance(item, ParquetInput):
            yield from _flush(predictor, pending)
            pending, images = [], 0
            yield from predictor.predict_parquet(item.path, batch)
            continue
        pending.append(item)
        images += isinstance(item, ImageInput)
        if images == batch or not images:  # a failure with no image before it need not wait
            yield from _flush(predictor, pending)
            pending, images = [], 0
    yield from _flush(predictor, pending)


def _load_predictor(args: argparse.Namespace) -> Predicts:
    from roadwork.predict import Predictor  # torch and transformers: only for this command

    return Predictor(load_params(args.params), device=args.device)


def predict(args: argparse.Namespace) -> int:
    """JSON lines {id, probability, label} per image, in input order; an error line for each input
    that fails. Exit status 1 when any failed."""
    predictor = _load_predictor(args)
    failed = 0
    for record in results_in_order(predictor, read_inputs(args.inputs, sys.stdin, sys.stderr), args.batch):
        failed += "error" in record
        print(json.dumps(record), flush=True)
    return 1 if failed else 0


def pretrain(args: argparse.Namespace) -> int:
    """Pretrain the tiny DINOv3 on the synthetic corpus and save it (the embedded default's backbone)."""
    from roadwork.config import section
    from roadwork.features.backbone import TinyBackboneConfig
    from roadwork.features.pretrain import PretrainConfig, pretrain, save_pretrained

    params = load_params(args.params)
    tiny = section(TinyBackboneConfig, params["backbone"], "tiny")
    extract = params["extract"]
    model, record = pretrain(
        PretrainConfig(),
        tiny,
        mean=tuple(extract["mean"]),
        std=tuple(extract["std"]),
        steps=args.steps,
        log=lambda entry: print(json.dumps(entry), flush=True),
    )
    save_pretrained(model, record, Path(args.out))
    print(f"pretrain: {record['steps']} steps -> {args.out}, fingerprint {record['fingerprint'][:12]}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="roadwork", description=__doc__)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("summary", help="print the final metrics and the output locations").set_defaults(
        func=summary
    )
    p = commands.add_parser(
        "predict",
        help="roadwork probability per image (JSON lines); exit status 1 if any input failed",
        description="Inputs: image files, directories (searched for images), NATIX-schema .parquet files, "
        "or '-' for base64-encoded images on standard input, one per line. One JSON line per image (per "
        "row of a parquet file), in input order; directories in sorted order. Images that would decode to "
        "more than roadwork.data.images.MAX_PIXELS pixels are refused (JPEGs decode at reduced scale).",
    )
    p.add_argument("inputs", nargs="+", help="image files, directories, .parquet files, or '-'")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--batch", type=int, default=32, help="images per forward pass")
    p.set_defaults(func=predict)
    p = commands.add_parser(
        "pretrain",
        help="pretrain the tiny DINOv3 on the synthetic corpus (reproduces assets/tiny-dinov3)",
        description="Object-level pretraining of the tiny DINOv3 of backbone.tiny (never the roadwork "
        "label); the recipe is roadwork.features.pretrain.PretrainConfig. Deterministic on one machine.",
    )
    p.add_argument("--out", required=True, help="folder to save the checkpoint and pretrain.json into")
    p.add_argument(
        "--steps", type=int, default=None, help="stop after this many steps (default: the recipe's)"
    )
    p.set_defaults(func=pretrain)
    args = parser.parse_args(argv)
    if args.command == "predict" and args.batch < 1:
        parser.error(f"--batch: must be >= 1, got {args.batch}")
    if args.command == "predict" and args.inputs.count("-") > 1:
        parser.error("'-' (standard input) may be given once")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
