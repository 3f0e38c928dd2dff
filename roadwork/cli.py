"""The `roadwork` command."""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import sys
from pathlib import Path

from roadwork.config import load_params, load_paths


def summary(args: argparse.Namespace) -> int:
    """Print the final metrics and where each output lives."""
    paths = load_paths(load_params(args.params))
    final_path = Path(paths.metrics) / "final.json"
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


def _image_files(paths: list[str]) -> list[Path]:
    """Files as given; directories expand to the image files under them (sorted)."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        else:
            files.append(path)
    return files


def _read_items(args: argparse.Namespace) -> tuple[list[tuple[str, bytes]], list[dict]]:
    """(key, bytes) for every image input, and error records for inputs that cannot even be read."""
    items: list[tuple[str, bytes]] = []
    errors: list[dict] = []
    for path in _image_files([p for p in args.inputs if not p.endswith(".parquet") and p != "-"]):
        try:
            items.append((str(path), path.read_bytes()))
        except OSError as e:
            errors.append({"id": str(path), "error": f"{type(e).__name__}: {e.strerror or e}"})
    if "-" in args.inputs:  # one base64-encoded image per line
        for n, line in enumerate(sys.stdin, start=1):
            if line.strip():
                try:
                    items.append((f"stdin:{n}", base64.b64decode(line.strip(), validate=True)))
                except binascii.Error as e:
                    errors.append({"id": f"stdin:{n}", "error": f"base64: {e}"})
    return items, errors


def predict(args: argparse.Namespace) -> int:
    """JSON lines {id, probability, label} per image; an error line for each input that fails."""
    from roadwork.predict import Predictor  # torch and transformers: only for this command

    predictor = Predictor(load_params(args.params), device=args.device)
    items, errors = _read_items(args)
    failed = len(errors)
    for record in errors:
        print(json.dumps(record))
    for start in range(0, len(items), args.batch):
        for record in predictor.predict(items[start : start + args.batch]):
            failed += "error" in record
            print(json.dumps(record), flush=True)
    for path in (p for p in args.inputs if p.endswith(".parquet")):
        for record in predictor.predict_parquet(Path(path)):
            failed += "error" in record
            print(json.dumps(record), flush=True)
    return 1 if failed else 0


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
        "or '-' for base64-encoded images on standard input, one per line.",
    )
    p.add_argument("inputs", nargs="+", help="image files, directories, .parquet files, or '-'")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--batch", type=int, default=32, help="images per forward pass")
    p.set_defaults(func=predict)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
