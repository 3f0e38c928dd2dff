"""The `roadwork` command."""

from __future__ import annotations

import argparse
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
            lo, hi = scores["mcc_ci"]
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="roadwork", description=__doc__)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("summary", help="print the final metrics and the output locations").set_defaults(
        func=summary
    )
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
