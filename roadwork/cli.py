"""The `roadwork` command."""

from __future__ import annotations

import argparse
import base64
import binascii
import dataclasses
import json
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple, Protocol, TextIO

from roadwork.config import load_params, load_paths


def _scores_line(name: str, scores: dict) -> str:
    lo, hi = scores["mcc_lo"], scores["mcc_hi"]
    auc = "" if scores.get("roc_auc") is None else f", ROC-AUC {scores['roc_auc']:.3f}"
    reward = f", reward {scores['reward']:.3f}" if "reward" in scores else ""
    mcc = f"MCC {scores['mcc']:.3f} (95% CI {lo:.3f}-{hi:.3f})"
    return f"{name:>34} {mcc}, accuracy {scores['accuracy']:.3f}{auc}{reward}"


def summary(args: argparse.Namespace) -> int:
    """Print the served model's scores (validator-style challenges, NATIX test) and the outputs."""
    paths = load_paths(load_params(args.params))
    scores_path = Path(paths.submission) / "scores.json"
    if not scores_path.is_file():
        print(f"{scores_path}: not found; run `dvc repro` first", file=sys.stderr)
        return 1
    if args.markdown:  # docs/results.md: the same numbers as markdown, from the outputs alone
        from roadwork.report.results import results_markdown

        text = results_markdown(paths)
        if args.markdown == "-":
            print(text, end="")
        else:
            Path(args.markdown).write_text(text)
        return 0
    scores = json.loads(scores_path.read_text())
    validator = Path(paths.validation) / "details.json"
    if validator.is_file():  # what a StreetVision validator would pay for, per protocol
        details = json.loads(validator.read_text())
        for protocol, block in details["protocols"].items():
            for domain, domain_scores in block["domains"].items():
                print(_scores_line(f"validator {protocol}, {domain}", domain_scores))
    print(_scores_line("NATIX test (with metadata)", scores["served"]["test"]))
    print(_scores_line("NATIX test as plain files", scores["image_only"]["test"]))
    print(
        f"served: {', '.join(scores['served']['members'])} to rows with metadata ({scores['target']} target)"
    )
    for name, route in scores["routes"].items():
        size = f"longer side <= {route['max_side']} px" if route["max_side"] else "any other size"
        print(f"        {', '.join(route['served'])} to images without metadata, {size} ({name})")
    print("outputs:")
    for label, path in (
        ("submission", Path(paths.submission) / "submission.csv"),
        ("scores", scores_path),
        ("validator", validator),
        ("report", Path(paths.reports) / "index.html"),
        ("trained heads", Path(paths.heads)),
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
    """What `roadwork predict` needs of a model (`roadwork.serve.predictor.Predictor`)."""

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
    from roadwork.serve.predictor import Predictor  # torch and transformers: only for this command

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


def card(args: argparse.Namespace) -> int:
    """Write the `model_card.json` a StreetVision miner publishes with its model (shared VALIDATOR.md)."""
    from roadwork.serve.card import CardError, model_card, served_description

    paths = load_paths(load_params(args.params))
    try:
        description = args.description or served_description(*_served_records(paths))
        model = model_card(
            name=args.name, hotkey=args.hotkey, version=args.version, description=description, time=args.time
        )
    except CardError as e:
        print(e, file=sys.stderr)
        return 2
    Path(args.out).write_text(json.dumps(model, indent=2) + "\n")
    print(f"card: {args.out}")
    return 0


def _served_records(paths: Any) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """What `submit` chose to serve (ensemble.json) and its validator-style scores, when measured."""
    choice = json.loads((Path(paths.submission) / "ensemble.json").read_text())
    validator = Path(paths.metrics) / "validator.json"
    return choice, json.loads(validator.read_text()) if validator.is_file() else None


def export(args: argparse.Namespace) -> int:
    """Write the served model as one self-contained folder (`roadwork.serve.export`)."""
    from roadwork.config import ConfigError, from_dict
    from roadwork.serve.card import CardError
    from roadwork.serve.export import ExportConfig, export_project

    params = load_params(args.params)
    given = {k: v for k, v in vars(args).items() if k in EXPORT_OPTIONS and v is not None}
    try:  # the command line over the project's `export:` section
        config = from_dict(ExportConfig, params.get("export", {}) | given, "export")
        files = export_project(params, Path(args.out), config)
    except (CardError, ConfigError, ValueError, FileExistsError, FileNotFoundError) as e:
        print(f"roadwork export: {e}", file=sys.stderr)
        return 2
    size = sum(f.stat().st_size for f in files)
    print(f"export: {len(files)} files, {size / 1e6:.1f} MB -> {args.out}")
    return 0


EXPORT_OPTIONS = ("name", "hotkey", "version", "backbone", "hub_id", "revision", "description", "time")


def config_apply(args: argparse.Namespace) -> int:
    """Merge a recipe overlay (configs/*.yaml) into config.yaml; print the keys it changes."""
    from roadwork.config import CONFIG_FILE, ConfigError, apply_overlay

    target = Path(args.params).parent / CONFIG_FILE
    try:
        changed = apply_overlay(args.overlay, target, write=not args.dry_run)
    except (ConfigError, OSError) as e:
        print(f"roadwork config apply: {e}", file=sys.stderr)
        return 2
    verb = "would change" if args.dry_run else "changed"
    print(f"{target}: {verb} {len(changed)} key(s)" + "".join(f"\n  {key}" for key in changed))
    return 0


def pretrain(args: argparse.Namespace) -> int:
    """Pretrain the tiny DINOv3 on the synthetic corpus and save it (the embedded default's backbone)."""
    from roadwork.config import section
    from roadwork.features.backbone import TinyBackboneConfig
    from roadwork.pretrain.recipe import PretrainConfig, pretrain, save_pretrained

    params = load_params(args.params)
    tiny = section(TinyBackboneConfig, params["backbone"], "tiny")
    extract = params["extract"]
    config = PretrainConfig()
    if args.styles:  # ways of drawing the corpus's scenes, with their shares: "photo=0.5,flat=0.5"
        styles = tuple((name, float(share)) for name, share in (s.split("=") for s in args.styles.split(",")))
        config = dataclasses.replace(config, corpus=dataclasses.replace(config.corpus, styles=styles))
    model, record = pretrain(
        config,
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
    p = commands.add_parser("summary", help="print the final metrics and the output locations")
    p.add_argument(
        "--markdown", metavar="FILE", default=None, help="write the results as markdown to FILE ('-': stdout)"
    )
    p.set_defaults(func=summary)
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
    p = commands.add_parser("config", help="apply a recipe overlay (configs/*.yaml) to config.yaml")
    p.add_argument("action", choices=["apply"])
    p.add_argument("overlay", help="a partial config.yaml, e.g. configs/natix-gpu.yaml")
    p.add_argument("--dry-run", action="store_true", help="print the keys it would change, write nothing")
    p.set_defaults(func=config_apply)
    p = commands.add_parser(
        "pretrain",
        help="pretrain the tiny DINOv3 on the synthetic corpus (reproduces assets/tiny-dinov3)",
        description="Object-level pretraining of the tiny DINOv3 of backbone.tiny (never the roadwork "
        "label); the recipe is roadwork.pretrain.recipe.PretrainConfig. Deterministic on one machine.",
    )
    p.add_argument("--out", required=True, help="folder to save the checkpoint and pretrain.json into")
    p.add_argument(
        "--steps", type=int, default=None, help="stop after this many steps (default: the recipe's)"
    )
    p.add_argument(
        "--styles", default=None, help="ways of drawing the corpus, e.g. photo=0.5,painted=0.25,flat=0.25"
    )
    p.set_defaults(func=pretrain)
    p = commands.add_parser(
        "card",
        help="write the model_card.json a StreetVision miner publishes",
        description="The fields NATIX's backend checks: model_name (unique across miners), description, "
        "version (X.Y.Z), submitted_by (the miner's hotkey), submission_time.",
    )
    p.add_argument("--name", required=True, help="model_name, unique across miners")
    p.add_argument("--hotkey", required=True, help="submitted_by: the miner's hotkey")
    p.add_argument("--version", default="1.0.0", help="X.Y.Z (default 1.0.0)")
    p.add_argument("--description", default=None, help="default: what is served, with its validator score")
    p.add_argument("--time", default=None, help="submission_time (default: now, UTC, ISO 8601)")
    p.add_argument("--out", default="model_card.json", help="where to write it (default model_card.json)")
    p.set_defaults(func=card)
    p = commands.add_parser(
        "export",
        help="write the served model as one self-contained folder (transformers pipeline, RoadworkDetector)",
        description="Heads (safetensors), the ensemble's choice, the view rule, the backbone (copied, or a "
        "public checkpoint's hub id and revision), the code transformers' image-classification pipeline "
        "loads with trust_remote_code, model_card.json and a README. Options default to the `export:` "
        "section of the configuration, when it has one.",
    )
    p.add_argument("out", help="the folder to write (made afresh; a folder holding other files is refused)")
    p.add_argument("--name", default=None, help="model_name, unique across miners")
    p.add_argument("--hotkey", default=None, help="submitted_by: the miner's hotkey")
    p.add_argument("--version", default=None, help="X.Y.Z (default 1.0.0)")
    p.add_argument("--backbone", choices=["copy", "hub"], default=None, help="copy (default) | hub")
    p.add_argument("--hub-id", dest="hub_id", default=None, help="the backbone's hub id (--backbone hub)")
    p.add_argument("--revision", default=None, help="the backbone's revision, a commit (--backbone hub)")
    p.add_argument("--description", default=None, help="default: what is served, with its validator score")
    p.add_argument("--time", default=None, help="submission_time (default: now, UTC, ISO 8601)")
    p.set_defaults(func=export)
    args = parser.parse_args(argv)
    if args.command == "predict" and args.batch < 1:
        parser.error(f"--batch: must be >= 1, got {args.batch}")
    if args.command == "predict" and args.inputs.count("-") > 1:
        parser.error("'-' (standard input) may be given once")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
