"""Campaign benchmark: the real stages end to end on NATIX-shaped synthetic data, timed stage by stage.

    python -m bench.campaign                     # 1 % of NATIX, real frame sizes, tiny models, this machine
    python -m bench.campaign --fraction 0.02 --out docs/bench/campaign-cpu2.json
    python -m bench.campaign --full --fraction 0.05 --out docs/bench/campaign-h200.json   # on a GPU

A fresh project is built in a temporary directory: the code of `roadwork/` and `stages/`, dvc.yaml, and
the configuration (`roadwork.config.write_params`). Then every stage that `--through` (default: submit)
depends on runs once, in dependency order, as its own process, with the command dvc.yaml gives it
(matrix stages expanded: one train@<member> per ensemble member): config, synth, ingest, backbone, gps,
views, text, extract, sam, masks, challenge, train@<member>..., finetune, tta, submit, as dvc.yaml
stands today. DVC itself does not run: its hashing of outputs is measured apart (docs/benchmarks.md,
"DVC at NATIX scale"). The data are NATIX-shaped: `--fraction` of the real split sizes (6,251 train and
2,298 test images), at `synth.scale` 1.0 1920x1080 video frames and 4032x3024 phone photos
(`synth.phone_share` of them photos). The `synth` step, the stand-in for the download, is this script's
`make_data`: the synth stage's generator on every core, its generated half at scale 0.25.

Per stage: wall seconds; start-up (process start to the stage module imported); work units and
throughput (images, views or training images per wall second); peak host memory (the largest process,
from wait4, and the sum over the stage's process tree, DataLoader workers included, polled every 0.2 s);
with a GPU, the utilisation (mean and max) and the peak memory in use from `nvidia-smi -lms 200`
(n/a without one).

The projection to the full NATIX size (`FORMULA`) splits each stage's wall time into a fixed part and
its work: the main thread's time outside imports, model and head loading and torch.compile's
compilation, sampled from its stack every 10 ms by the wrapper the stage runs under (`STAGE_WRAPPER`,
which then runs the module exactly as `python -m` does). The work grows with the stage's work units:
images (ingest, gps, views, text, masks, challenge), views = 12 x (train images x copies + test images)
(extract; copies = 1 + aug_copies + challenge_copies), training images (train@<member>: the same number
of epochs assumed), adaptation-split images (finetune), augmentations x test images x 12 views (tta),
test images (submit). config, backbone and sam do not grow with the data; synth stands in for the
download and is not projected.

`--full`: ViT-H+/16 (840.6M parameters, bench/backbone.py's `vith16plus`) and SAM 3 (`Sam3Config()`,
840.4M) with random weights (speed does not depend on the values), saved with `save_pretrained` in
float32 (as the real checkpoints are) and named by `backbone.model` / `masks.model`; the README's
real-data settings (bf16, `extract.side` 512, `extract.compile`, shards of 512 rows, head width 512,
DESIGN's 16 TTA augmentations) and `--workers` DataLoader workers for extract, masks and tta. It needs
a GPU. `--members`, `--epochs`, `--side`, `--scale` and `--set KEY=VALUE` shrink a run (the test runs
it tiny on the CPU).

Prints one markdown table and, with `--out`, writes a JSON file: the machine, the software versions,
the command, the date, the settings, the per-stage numbers and the projection.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from bench.campaign_probe import STAGE_WRAPPER, GpuMonitor, StageRun, machine_info, run_stage
from bench.campaign_projection import FORMULA, FORMULA_FIT, NATIX, fit, project, table, totals
from roadwork.config import load_params, write_params

ROOT = Path(__file__).resolve().parents[1]


MIN_ROWS = {"train": 48, "test": 16}  # the validation split and the 5 DoRA folds need a few videos each
GENERATED_SCALE = 0.25  # the generated half's size (1008x756 photos): challenges cut it to 224 px
SHARD_IMAGES = 500  # synthetic images per parquet shard (about 0.4 GB at full size)
# DESIGN's 16 TTA augmentations (README, "Real data and checkpoints").
TTA_16 = [
    {},
    {"flip": True},
    {"scale": 0.9},
    {"scale": 1.1},
    {"flip": True, "scale": 0.9},
    {"flip": True, "scale": 1.1},
    {"scale": 1.1, "dx": -0.04, "dy": -0.04},
    {"scale": 1.1, "dx": 0.04, "dy": -0.04},
    {"scale": 1.1, "dx": -0.04, "dy": 0.04},
    {"scale": 1.1, "dx": 0.04, "dy": 0.04},
    {"scale": 1.1, "dx": -0.04},
    {"scale": 1.1, "dx": 0.04},
    {"brightness": 0.9},
    {"brightness": 1.1},
    {"contrast": 0.9, "saturation": 1.1},
    {"contrast": 1.1, "saturation": 0.9},
]


# ---------------------------------------------------------------------------------------------- setup


def split_rows(fraction: float) -> dict[str, int]:
    """Images per split: `fraction` of NATIX's, refused below what the folds and validation need."""
    rows = {split: round(n * fraction) for split, n in NATIX.items()}
    small = [f"{s} {rows[s]} < {MIN_ROWS[s]}" for s in rows if rows[s] < MIN_ROWS[s]]
    if small:
        raise SystemExit(f"--fraction {fraction}: too few images ({', '.join(small)}); raise it")
    return rows


def campaign_params(args: argparse.Namespace, models: dict[str, str], fraction: float) -> dict[str, Any]:
    """The project's configuration with NATIX-shaped synthetic data and the chosen models and settings."""
    params = load_params(ROOT / "params.yaml")
    rows = split_rows(fraction)
    params["synth"].update(
        rows=rows,
        shards={s: max(1, math.ceil(n / SHARD_IMAGES)) for s, n in rows.items()},
        scale=args.scale,
    )
    if args.phone_share is not None:
        params["synth"]["phone_share"] = args.phone_share
    members = params["ensemble"]["members"]
    if args.members:
        unknown = sorted(set(args.members) - set(members))
        if unknown:
            raise SystemExit(f"--members: {unknown} not in ensemble.members ({sorted(members)})")
        params["ensemble"]["members"] = {name: members[name] for name in args.members}
        params["ensemble"]["top_k"] = min(params["ensemble"]["top_k"], len(args.members))
    if args.epochs:
        params["train"].update(epochs=args.epochs, patience=min(params["train"]["patience"], args.epochs))
    # Random weights throughout (speed does not depend on them): "tiny" builds the configured tiny
    # architectures, --full names the saved full-size ones.
    params["backbone"]["model"], params["masks"]["model"] = models["backbone"], models["masks"]
    if args.full:
        workers = args.workers
        params["backbone"].update(dtype="bfloat16")
        params["masks"].update(dtype="bfloat16", device="cuda", shard_rows=512, workers=workers)
        params["extract"].update(
            side=512, batch_images=8, workers=workers, device="cuda", compile=True, shard_rows=512
        )
        params["train"].update(amp="bf16", width=512, heads=8)
        # DESIGN's six full heads (the embedded default trains two): wider 1.5x, more_heads 2x
        full_members = {
            "wider": {"width": 768, "seed": 789},
            "more_heads": {"heads": 16, "seed": 2026},
            "gps_strong": {"gps_weighting": True, "gps_near_weight": 10.0, "seed": 314},
        }
        members = params["ensemble"]["members"]
        for name, override in full_members.items():
            members[name] = {**members.get(name, {}), **override}
        params["tta"].update(shard_rows=512, augmentations=TTA_16, workers=workers)
        params["ingest"]["workers"] = min(8, os.cpu_count() or 1)
    elif args.workers is not None:
        for name in ("extract", "masks", "tta"):
            params[name]["workers"] = args.workers
    if args.side:
        params["extract"]["side"] = args.side
    if args.device:
        for name in ("text", "extract", "masks", "train", "finetune", "tta"):
            params[name]["device"] = args.device
    if len(args.fraction) > 1:  # two sizes: the same work per unit in both (see `fit`)
        params["train"]["patience"] = params["train"]["epochs"]
        params["finetune"]["patience"] = params["finetune"]["epochs"]
        default = params["train"]["model"]
        members = params["ensemble"]["members"].items()
        heads = [name for name, member in members if member.get("model", default) != "mlp"]
        heads = heads[: params["ensemble"]["top_k"]] or None  # None: no full head, nothing to adapt
        params["finetune"]["members"] = params["tta"]["members"] = heads
    for assignment in args.set or []:
        key, sep, value = assignment.partition("=")
        *parents, leaf = key.split(".")
        try:
            node = _lookup(params, ".".join(parents)) if parents else params
            if not sep or leaf not in node:
                raise KeyError(key)
        except (KeyError, TypeError):
            raise SystemExit(f"--set {assignment}: expected KEY=VALUE, KEY in the configuration") from None
        node[leaf] = yaml.safe_load(value)
    return params


def build_full_models(directory: Path) -> dict[str, str]:
    """Save a random ViT-H+/16 and a random SAM 3 (full size, float32) where `backbone.model` and
    `masks.model` can name them; returns those two paths."""
    import torch
    from transformers import DINOv3ViTModel, Sam3Config, Sam3ImageProcessor, Sam3Model, Sam3Processor

    from bench.backbone import vith16plus
    from roadwork.masks.sam import build_tiny_tokenizer

    out = {"backbone": directory / "vith16plus", "masks": directory / "sam3"}
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # initialising 1.7B weights
    for name, build in (
        ("backbone", lambda: DINOv3ViTModel(vith16plus())),
        ("masks", lambda: Sam3Model(Sam3Config())),
    ):
        torch.manual_seed(0)
        with device:
            model = build()
        model.save_pretrained(out[name])
        del model
    # The real tokenizer is a download; the tiny one's ids fit the real 49,408-token vocabulary.
    processor = Sam3Processor(image_processor=Sam3ImageProcessor(), tokenizer=build_tiny_tokenizer())
    processor.save_pretrained(out["masks"])
    return {k: str(v) for k, v in out.items()}


def make_data(project: Path) -> None:
    """What the `synth` stage writes, written faster (every core; the generated half at a small scale).

    The stage's generator with its rendering processes capped at 2 and the generated half (the second
    style, only cut into 224 px challenges) drawn at full size, where its edge-preserving filter takes
    ~50 s per 4032x3024 photo, would cost a GPU host more than the stages measured.
    """
    from dataclasses import replace

    from roadwork.config import load_paths, section
    from roadwork.synth import dataset

    params = load_params(project / "params.yaml")
    paths, config = load_paths(params), section(dataset.SynthConfig, params, "synth")
    workers = os.cpu_count() or 1
    start = time.perf_counter()
    dataset.write_dataset(config, project / paths.synthetic, workers=workers)
    generated = getattr(paths, "synthetic_generated", None)
    if generated and hasattr(dataset, "write_generated"):
        small = replace(config, scale=min(config.scale, GENERATED_SCALE))
        dataset.write_generated(small, project / generated, workers=workers)
    print(f"campaign: data written in {time.perf_counter() - start:.1f} s by {workers} processes")


def make_project(directory: Path, params: dict[str, Any]) -> None:
    """The project's code and dvc.yaml in `directory`, with `params` as its configuration."""
    for name in ("roadwork", "stages"):
        shutil.copytree(ROOT / name, directory / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", directory / "dvc.yaml")
    write_params(directory, params)


def _lookup(params: dict[str, Any], dotted: str) -> Any:
    node: Any = params
    for part in dotted.split("."):
        node = node[part]
    return node


def _resolve(text: str, params: dict[str, Any], key: str | None) -> str:
    """dvc.yaml's `${a.b}` interpolation (and a matrix stage's `${key}`) of one string."""

    def value(match: re.Match) -> str:
        name = match[1]
        if key is not None and name in ("key", "item.member", "key.member"):
            return key
        return str(_lookup(params, name))

    return re.sub(r"\$\{([^}]+)\}", value, text)


def _paths(entries: list | None, params: dict[str, Any], key: str | None) -> list[str]:
    """The paths of a deps / outs / metrics / plots list (entries are strings or {path: options})."""
    out = []
    for entry in entries or []:
        path = entry if isinstance(entry, str) else next(iter(entry))
        out.append(_resolve(path, params, key).rstrip("/"))
    return out


def pipeline(project: Path, params: dict[str, Any], through: str) -> list[tuple[str, list[str]]]:
    """(name, argv) of `through` and every stage it depends on, from the project's dvc.yaml (matrix
    stages expanded, `${...}` resolved), in dependency order (ties in dvc.yaml's order)."""
    spec = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    stages: dict[str, dict[str, Any]] = {}
    for name, stage in spec.items():
        keys: list[str | None] = [None]
        if "matrix" in stage:
            ((_, values),) = stage["matrix"].items()
            values = _lookup(params, values[2:-1]) if isinstance(values, str) else values
            keys = list(values)
        for key in keys:
            stages[name if key is None else f"{name}@{key}"] = {
                "cmd": _resolve(stage["cmd"], params, key),
                "deps": _paths(stage.get("deps"), params, key),
                "outs": [
                    p for kind in ("outs", "metrics", "plots") for p in _paths(stage.get(kind), params, key)
                ],
            }
    if through not in stages:
        raise SystemExit(f"--through {through}: not a stage of dvc.yaml ({', '.join(stages)})")

    def inside(a: str, b: str) -> bool:
        return a == b or a.startswith(b + "/") or b.startswith(a + "/")

    needs = {
        name: {
            other
            for other, o in stages.items()
            if other != name and any(inside(d, out) for d in s["deps"] for out in o["outs"])
        }
        for name, s in stages.items()
    }
    wanted, todo = set(), [through]
    while todo:
        name = todo.pop()
        if name not in wanted:
            wanted.add(name)
            todo += needs[name]
    order: list[str] = []
    while len(order) < len(wanted):
        ready = [n for n in stages if n in wanted and n not in order and needs[n] <= set(order)]
        if not ready:
            raise SystemExit(f"dvc.yaml: a cycle among {sorted(wanted - set(order))}")
        order.append(ready[0])
    out = []
    for name in order:
        argv = shlex.split(stages[name]["cmd"])
        if name == "synth":  # the stand-in for the download: written by this script (`make_data`)
            argv = [sys.executable, "-m", "bench.campaign", "--make-data", str(project)]
        elif argv[:2] == ["python", "-m"]:  # the same module, run so that it says when its imports are done
            argv = [sys.executable, "-c", STAGE_WRAPPER, *argv[2:]]
        elif argv[0] == "python":
            argv[0] = sys.executable
        out.append((name, argv))
    return out


# ---------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--fraction",
        type=float,
        nargs="+",
        default=[0.01],
        help="share of NATIX's split sizes; two values: run both and project from the line through them",
    )
    parser.add_argument("--scale", type=float, default=1.0, help="synth.scale (1.0: real frame sizes)")
    parser.add_argument("--phone-share", type=float, help="synth.phone_share (default: config.yaml's)")
    parser.add_argument("--full", action="store_true", help="ViT-H+/16 and SAM 3, real-run settings (GPU)")
    parser.add_argument("--workers", type=int, help="DataLoader workers (--full default: min(12, cores - 2))")
    parser.add_argument("--members", nargs="+", help="ensemble members to train (default: all)")
    parser.add_argument("--epochs", type=int, help="train.epochs (default: config.yaml's)")
    parser.add_argument("--side", type=int, help="extract.side (default: config.yaml's; 512 with --full)")
    parser.add_argument("--device", help="device of every model stage (default: auto / cuda with --full)")
    parser.add_argument(
        "--set",
        nargs="+",
        metavar="KEY=VALUE",
        help="any other configuration key, applied last (YAML values: --set finetune.folds=2)",
    )
    parser.add_argument("--through", default="submit", help="the last stage (default: submit)")
    parser.add_argument("--workdir", type=Path, help="build the project here (default: a temporary dir)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary project directory")
    parser.add_argument("--out", type=Path, help="write the JSON result here")
    parser.add_argument("--make-data", type=Path, help=argparse.SUPPRESS)  # the `synth` step, in a child
    args = parser.parse_args(argv)
    if len(args.fraction) > 2 or len(set(args.fraction)) != len(args.fraction):
        parser.error("--fraction: one value, or two different ones")
    args.command = " ".join(["python", "-m", "bench.campaign", *map(shlex.quote, argv or sys.argv[1:])])
    if args.full and args.workers is None:
        args.workers = max(1, min(12, (os.cpu_count() or 1) - 2))
    return args


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    args = parse_args(argv)
    if args.make_data:
        make_data(args.make_data)
        return None
    if args.full:
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--full runs the real architectures: it needs a GPU")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="campaign-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if any(workdir.glob("project-*")):
        raise SystemExit(f"{workdir} holds a campaign already; give an empty --workdir")
    gpu = GpuMonitor()
    try:
        result = campaign(args, workdir, gpu)
    finally:
        gpu.stop()
        if args.workdir is None and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.keep or args.workdir:
        print(f"projects kept in {workdir}")
    return result


def run_pipeline(
    args: argparse.Namespace, params: dict[str, Any], project_dir: Path, gpu: GpuMonitor
) -> tuple[list[StageRun], dict[str, int]]:
    """Every stage once in a fresh project; the runs and the indexed images per split."""
    from roadwork.data.index import read_index

    make_project(project_dir, params)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(ROOT),  # `python -m bench.campaign --make-data` from the temporary project
    }
    rows = params["synth"]["rows"]
    print(
        f"campaign: {rows['train']} train + {rows['test']} test images, scale {args.scale:g}, "
        f"backbone {Path(params['backbone']['model']).name}, SAM 3 {Path(params['masks']['model']).name}, "
        f"side {params['extract']['side']}, {len(params['ensemble']['members'])} member(s); in {project_dir}",
        flush=True,
    )
    runs = []
    for name, argv in pipeline(project_dir, params, args.through):
        run = run_stage(name, argv, project_dir, env, gpu)
        runs.append(run)
        print(f"campaign: {name:<20} {run.wall_s:8.1f} s", flush=True)
    index = read_index(project_dir / params["paths"]["prepared"])
    counts = {split: int((index["split"] == split).sum()) for split in NATIX}
    project(runs, params, counts)
    return runs, counts


def campaign(args: argparse.Namespace, workdir: Path, gpu: GpuMonitor) -> dict[str, Any]:
    started = datetime.datetime.now(datetime.UTC)
    load_before = os.getloadavg()
    models = {"backbone": "tiny", "masks": "tiny"}
    prepare_s = 0.0
    if args.full:
        start = time.perf_counter()
        models = build_full_models(workdir / "models")
        prepare_s = time.perf_counter() - start
        print(f"campaign: random ViT-H+/16 and SAM 3 saved in {prepare_s:.0f} s", flush=True)
    sizes = []
    for fraction in sorted(args.fraction):
        params = campaign_params(args, models, fraction)
        runs, counts = run_pipeline(args, params, workdir / f"project-{fraction:g}", gpu)
        sizes.append({"fraction": fraction, "indexed": counts, "runs": runs})
    runs = sizes[-1]["runs"]  # `params`: the largest fraction's, as the runs
    if len(sizes) > 1:
        fit(sizes[0]["runs"], runs)
    text = table(runs, gpu.available, sizes[0]["runs"] if len(sizes) > 1 else None)
    formula = FORMULA_FIT if len(sizes) > 1 else FORMULA
    print()
    print(text)
    print(f"\n{formula}")
    result = {
        "command": args.command,
        "date": started.isoformat(timespec="seconds"),
        "machine": machine_info(gpu) | {"load_average_before": load_before},
        "settings": {
            "fractions": sorted(args.fraction),
            "scale": args.scale,
            "phone_share": params["synth"]["phone_share"],
            "backbone": Path(models["backbone"]).name,
            "masks": Path(models["masks"]).name,
            "extract_side": params["extract"]["side"],
            "backbone_dtype": params["backbone"]["dtype"],
            "extract_compile": params["extract"]["compile"],
            "workers": {name: params[name]["workers"] for name in ("extract", "masks", "tta")},
            "members": list(params["ensemble"]["members"]),
            "epochs": params["train"]["epochs"],
            "patience": params["train"]["patience"],
            "tta_augmentations": len(params["tta"]["augmentations"]),
            "set": args.set or [],
        },
        "indexed": sizes[-1]["indexed"],
        "prepare_models_s": prepare_s,
        "stages": [asdict(r) for r in runs],
        "smaller": [{**size, "runs": [asdict(r) for r in size["runs"]]} for size in sizes[:-1]],
        "totals": totals(runs),
        "projection": {"natix": NATIX, "formula": formula},
        "table": text,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
