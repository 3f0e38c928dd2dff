"""Campaign benchmark: the real stages end to end on NATIX-shaped synthetic data, timed stage by stage.

    python bench/campaign.py                                   # tiny: 1 % of NATIX, full-size frames,
                                                               # tiny models, on this machine (CPU)
    python bench/campaign.py --fraction 0.02 --out docs/bench/campaign-cpu2.json
    python bench/campaign.py --full --fraction 0.05 --out docs/bench/campaign-h200.json
                                                               # the real architectures on a GPU

A fresh project is built in a temporary directory (the code of `roadwork/` and `stages/`, dvc.yaml, and
the configuration written by `roadwork.config.write_params`), the `synth` stage writes a dataset of
NATIX's shape there (`--fraction` of the real split sizes, 6,251 train and 2,298 test images;
`synth.scale` 1.0: 1920x1080 video frames and 4032x3024 phone photos, `synth.phone_share` of them
photos), and then every stage runs once, in dvc.yaml's order, as its own process
(`python -m stages.<name>`, what `dvc repro` runs; DVC's own hashing is left out, see
docs/benchmarks.md "DVC at NATIX scale"): config, synth, ingest, backbone, gps, views, text, extract,
sam, masks, train@<member> for every ensemble member, finetune, tta, submit.

Per stage: wall seconds; throughput in the unit that stage's work grows with (images, views, training
images); peak host memory (the largest process, from wait4, and the sum over the stage's process tree,
polled every 0.2 s); with a GPU, the utilisation (mean and max) and the peak memory in use, polled by
`nvidia-smi -lms 200` (on a CPU machine: n/a).

The projection to the full NATIX size splits each stage's time into a fixed part and a part that
grows with its work, from the stage's own progress lines (`roadwork.progress`: the loop over images,
epochs or folds; the first segment of a loop, which holds compilation, worker start-up and warm-up,
counts as fixed beyond the loop's steady rate):

    projected = fixed + steady x (units at NATIX size) / (units measured)

where steady = loop units / steady rate of the loop and fixed = wall - steady. A stage without a loop
line takes `fixed` = the bare start-up of a Python process importing torch, polars and roadwork
(measured once per campaign); model materialisation (`backbone`, `sam`) and `config` do not grow with
the data (projected = wall). The units: images for ingest, gps, views, text and masks; views,
12 x (train images x (1 + extract.aug_copies) + test images), for extract; training images for each
train@<member> (the same number of epochs assumed); adaptation-split images for finetune;
augmentations x test images x 12 views for tta; test images for submit. `synth` is the stand-in for
the download and is not projected. A projection from a small fraction is a projection: it assumes the
per-unit cost stays what it was (no cache or memory effects at scale).

`--full`: ViT-H+/16 (840.6M parameters, bench/backbone.py's `vith16plus`) and SAM 3 (`Sam3Config()`,
840.4M) with random weights (speed does not depend on the values), saved with `save_pretrained` in
float32 (as the real checkpoints are) and named by `backbone.model` / `masks.model`; the README's
real-data settings (bf16, `extract.side` 512, `extract.compile`, shards of 512 rows, head width 512,
DESIGN's 16 TTA augmentations) and `--workers` DataLoader workers for extract, masks and tta. It needs
a GPU. `--members`, `--epochs`, `--side` and `--scale` shrink a run (the test runs it tiny on the CPU).

Prints one markdown table and, with `--out`, writes a JSON file: the machine, the software versions,
the command, the date, the settings, the per-stage numbers and the projection.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python bench/campaign.py`: the project root is not on the path
    sys.path.insert(0, str(ROOT))

from roadwork.config import load_params, write_params  # noqa: E402

NATIX = {"train": 6251, "test": 2298}  # natix-network-org/roadwork: 8,549 labelled images
MIN_ROWS = {"train": 48, "test": 16}  # the validation split and the 5 DoRA folds need a few videos each
SHARD_IMAGES = 500  # synthetic images per parquet shard (about 0.4 GB at full size)
POLL_S = 0.2
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
# The progress loop (`roadwork.progress` desc) whose lines time each stage's per-unit work.
LOOPS = {
    "ingest": "ingest: image headers",
    "extract": "extract",
    "masks": "masks",
    "train": "epochs",
    "finetune": "DoRA folds",
    "tta": "tta",
}
CONSTANT = ("config", "backbone", "sam")  # work that does not grow with the data


# ---------------------------------------------------------------------------------------------- setup


def split_rows(fraction: float) -> dict[str, int]:
    """Images per split: `fraction` of NATIX's, refused below what the folds and validation need."""
    rows = {split: round(n * fraction) for split, n in NATIX.items()}
    small = [f"{s} {rows[s]} < {MIN_ROWS[s]}" for s in rows if rows[s] < MIN_ROWS[s]]
    if small:
        raise SystemExit(f"--fraction {fraction}: too few images ({', '.join(small)}); raise it")
    return rows


def campaign_params(args: argparse.Namespace, models: dict[str, str]) -> dict[str, Any]:
    """The project's configuration with NATIX-shaped synthetic data and the chosen models and settings."""
    params = load_params(ROOT / "params.yaml")
    rows = split_rows(args.fraction)
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
    if args.full:
        workers = args.workers
        params["backbone"].update(model=models["backbone"], dtype="bfloat16")
        params["masks"].update(
            model=models["masks"], dtype="bfloat16", device="cuda", shard_rows=512, workers=workers
        )
        params["extract"].update(
            side=512, batch_images=8, workers=workers, device="cuda", compile=True, shard_rows=512
        )
        params["train"].update(amp="bf16", width=512, heads=8)
        full_members = {"wider": {"width": 768}, "more_heads": {"heads": 16}}  # DESIGN's 1.5x and 2x
        for name, override in full_members.items():
            if name in params["ensemble"]["members"]:
                params["ensemble"]["members"][name] = {**params["ensemble"]["members"][name], **override}
        params["tta"].update(shard_rows=512, augmentations=TTA_16, workers=workers)
        params["ingest"]["workers"] = min(8, os.cpu_count() or 1)
    elif args.workers is not None:
        for name in ("extract", "masks", "tta"):
            params[name]["workers"] = args.workers
    if args.side:
        params["extract"]["side"] = args.side
    if args.tiny_sam_side:
        params["masks"]["tiny"]["image_size"] = args.tiny_sam_side
    if args.device:
        for name in ("text", "extract", "masks", "train", "finetune", "tta"):
            params[name]["device"] = args.device
    if args.bootstrap:
        params["submit"]["bootstrap"] = args.bootstrap
    return params


def build_full_models(directory: Path) -> dict[str, str]:
    """Save a random ViT-H+/16 and a random SAM 3 (full size, float32) where `backbone.model` and
    `masks.model` can name them; returns those two paths."""
    import torch
    from backbone import vith16plus  # bench/backbone.py: this script's folder is on sys.path
    from transformers import DINOv3ViTModel, Sam3Config, Sam3ImageProcessor, Sam3Model, Sam3Processor

    from roadwork.features.sam import build_tiny_tokenizer

    out = {"backbone": directory / "vith16plus", "masks": directory / "sam3"}
    torch.manual_seed(0)
    DINOv3ViTModel(vith16plus()).save_pretrained(out["backbone"])
    torch.manual_seed(0)
    Sam3Model(Sam3Config()).save_pretrained(out["masks"])
    # The real tokenizer is a download; the tiny one's ids fit the real 49,408-token vocabulary.
    processor = Sam3Processor(image_processor=Sam3ImageProcessor(), tokenizer=build_tiny_tokenizer())
    processor.save_pretrained(out["masks"])
    return {k: str(v) for k, v in out.items()}


def make_project(directory: Path, params: dict[str, Any]) -> None:
    """The project's code and dvc.yaml in `directory`, with `params` as its configuration."""
    for name in ("roadwork", "stages"):
        shutil.copytree(ROOT / name, directory / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", directory / "dvc.yaml")
    write_params(directory, params)


def stage_commands(params: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """(name, argv) of every stage in dvc.yaml's order, one train@<member> per ensemble member."""
    before = ["config", "synth", "ingest", "backbone", "gps", "views", "text", "extract", "sam", "masks"]
    out = [(name, ["-m", f"stages.{name}"]) for name in before]
    out += [(f"train@{m}", ["-m", "stages.train", m]) for m in params["ensemble"]["members"]]
    out += [(name, ["-m", f"stages.{name}"]) for name in ("finetune", "tta", "submit")]
    return [(name, [sys.executable, *argv]) for name, argv in out]


# ---------------------------------------------------------------------------------------------- probes


class GpuMonitor:
    """`nvidia-smi -lms 200` in the background: (time, utilisation %, memory used MiB) samples."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float, float]] = []
        self.name: str | None = None
        self._process: subprocess.Popen | None = None
        exe = shutil.which("nvidia-smi")
        if exe is None:
            return
        gpu = (os.environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0]
        query = [exe, "-i", gpu, "--format=csv,noheader,nounits"]
        try:
            self.name = subprocess.run(
                [*query, "--query-gpu=name,memory.total,driver_version"],
                capture_output=True,
                text=True,
                check=True,
                timeout=30,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return
        self._process = subprocess.Popen(
            [*query, "--query-gpu=utilization.gpu,memory.used", f"-lms={int(POLL_S * 1000)}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for line in self._process.stdout:
            try:
                util, memory = (float(v) for v in line.split(","))
            except ValueError:  # "[N/A]" on some parts
                continue
            self.samples.append((time.perf_counter(), util, memory))

    @property
    def available(self) -> bool:
        return self._process is not None

    def window(self, start: float, end: float) -> dict[str, float | None]:
        """Mean and max utilisation and peak memory (MiB) of the samples between start and end."""
        inside = [(u, m) for t, u, m in self.samples if start <= t <= end]
        if not inside:
            return {"gpu_util_mean": None, "gpu_util_max": None, "gpu_mem_peak_mib": None}
        utils = [u for u, _ in inside]
        return {
            "gpu_util_mean": sum(utils) / len(utils),
            "gpu_util_max": max(utils),
            "gpu_mem_peak_mib": max(m for _, m in inside),
        }

    def idle_mib(self) -> float | None:
        """Memory in use before the first stage (the driver's and other tenants')."""
        return self.samples[-1][2] if self.samples else None

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait()


def tree_rss_mib(pid: int) -> float:
    """Resident memory of `pid` and its descendants, summed (Linux /proc; shared pages once per process)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0, [pid]
    page = os.sysconf("SC_PAGE_SIZE")
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * page
        except (OSError, IndexError, ValueError):
            continue
    return total / 2**20


# ---------------------------------------------------------------------------------------------- running


@dataclass
class StageRun:
    """One stage's measurements (units and the projection are filled in afterwards)."""

    stage: str
    wall_s: float
    rss_peak_mib: float  # the largest single process of the stage (wait4's ru_maxrss)
    tree_rss_peak_mib: float  # the stage's processes together (polled)
    gpu_util_mean: float | None = None
    gpu_util_max: float | None = None
    gpu_mem_peak_mib: float | None = None
    loops: list[dict[str, float]] = field(default_factory=list)  # per progress loop: n, seconds, steady
    unit: str = ""
    units: float = 0.0
    natix_units: float = 0.0
    fixed_s: float = 0.0
    variable_s: float = 0.0
    projected_s: float | None = None


def run_stage(name: str, argv: list[str], cwd: Path, env: dict[str, str], gpu: GpuMonitor) -> StageRun:
    """Run one stage to completion (its output in `logs/<name>.log`); its time, memory and GPU use."""
    log = cwd / "logs" / f"{name}.log"
    log.parent.mkdir(exist_ok=True)
    peak_tree = 0.0
    with log.open("w") as out:
        start = time.perf_counter()
        process = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        done = threading.Event()

        def poll() -> None:
            nonlocal peak_tree
            while not done.is_set():
                peak_tree = max(peak_tree, tree_rss_mib(process.pid))
                done.wait(POLL_S)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        _, status, usage = os.wait4(process.pid, 0)
        end = time.perf_counter()
        done.set()
        poller.join()
    process.returncode = os.waitstatus_to_exitcode(status)
    text = log.read_text()
    if process.returncode != 0:
        raise SystemExit(f"stage {name} failed (exit {process.returncode}); {log}:\n{text[-4000:]}")
    run = StageRun(
        stage=name,
        wall_s=end - start,
        rss_peak_mib=usage.ru_maxrss / 1024,
        tree_rss_peak_mib=max(peak_tree, usage.ru_maxrss / 1024),
        **(gpu.window(start, end) if gpu.available else {}),
    )
    desc = LOOPS.get(name.split("@")[0])
    run.loops = progress_loops(text, desc) if desc else []
    return run


_LINE = re.compile(  # tqdm's meter without a bar: "desc:  25% 300/1200 [00:12<00:37, 24.30img/s]"
    r"^(?P<desc>.+?): +\d+% (?P<n>\d+)/(?P<total>\d+) \[[^\]<]*<[^,\]]*, +"
    r"(?:(?P<inv>[\d.]+)s/\S+|(?P<rate>[\d.]+)\S*/s|\?\S*/s)\]$"
)


def progress_loops(text: str, desc: str) -> list[dict[str, float]]:
    """The loops of one progress description in a log (`roadwork.progress` lines, tqdm's meter): per loop
    its units `n`, its `seconds`, and `steady`, the seconds those units take at the loop's rate after its
    first line (the first segment holds compilation and warm-up)."""
    loops: list[list[tuple[int, float]]] = []
    for line in text.splitlines():
        match = _LINE.match(line.strip())
        if not match or match["desc"] != desc:
            continue
        n = int(match["n"])
        if match["inv"]:
            seconds = n * float(match["inv"])
        elif match["rate"] and float(match["rate"]) > 0:
            seconds = n / float(match["rate"])
        else:  # "?it/s": nothing done yet
            seconds = 0.0
        if not loops or n < loops[-1][-1][0]:
            loops.append([])
        loops[-1].append((n, seconds))
    out = []
    for points in loops:
        n, seconds = points[-1]
        n1, t1 = points[0]
        steady = seconds
        if len(points) >= 2 and n > n1 and seconds > t1:
            steady = n * (seconds - t1) / (n - n1)  # all n units at the rate after the first line
        out.append({"n": n, "seconds": seconds, "steady": min(steady, seconds)})
    return out


def startup_seconds(env: dict[str, str], cwd: Path) -> float:
    """Wall time of a bare stage-like process: Python importing torch, polars and the roadwork basics."""
    code = "import torch, polars, zarr, roadwork.config, roadwork.data.index"
    times = []
    for _ in range(2):  # the first may pay for a cold file cache
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, check=True)
        times.append(time.perf_counter() - start)
    return min(times)


# ---------------------------------------------------------------------------------------------- projection


def work_units(params: dict[str, Any], counts: dict[str, int], views: int) -> dict[str, tuple[str, float]]:
    """(unit, amount) of the work of each data-dependent stage for the given split sizes."""
    train, test = counts["train"], counts["test"]
    copies = 1 + params["extract"]["aug_copies"]
    splits = params["extract"]["splits"]
    extract_views = views * (train * copies * ("train" in splits) + test * ("test" in splits))
    tta_images = sum(
        test if part == "test" else train * params["train"]["val_fraction"] for part in params["tta"]["parts"]
    )
    adapt = counts[params["finetune"]["split"]]
    units = {
        "ingest": ("images", train + test),
        "gps": ("images", train + test),
        "views": ("images", train + test),
        "text": ("images", train + test),
        "extract": ("views", extract_views),
        "masks": ("images", train + test),
        "finetune": ("images", adapt),
        "tta": ("views", len(params["tta"]["augmentations"]) * tta_images * views),
        "submit": ("images", test),
    }
    for member in params["ensemble"]["members"]:
        units[f"train@{member}"] = ("train images", train)
    return units


def project(runs: list[StageRun], params: dict[str, Any], counts: dict[str, int], startup: float) -> None:
    """Fill in each run's units and its projection to the full NATIX size (module docstring)."""
    from roadwork.config import section
    from roadwork.views.plan import ViewsConfig, n_views

    views = n_views(section(ViewsConfig, params, "views"))
    measured = work_units(params, counts, views)
    natix = work_units(params, NATIX, views)
    for run in runs:
        if run.stage == "synth":
            continue
        if run.stage in CONSTANT or run.stage not in measured:
            run.fixed_s, run.projected_s = run.wall_s, run.wall_s
            continue
        run.unit, run.units = measured[run.stage]
        run.natix_units = natix[run.stage][1]
        if run.loops:
            run.variable_s = sum(loop["steady"] for loop in run.loops)
        else:
            run.variable_s = max(0.0, run.wall_s - startup)
        run.fixed_s = run.wall_s - run.variable_s
        run.projected_s = run.fixed_s + run.variable_s * run.natix_units / max(run.units, 1e-9)


# ---------------------------------------------------------------------------------------------- report


def machine_info(gpu: GpuMonitor) -> dict[str, Any]:
    import importlib.metadata as md

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gb = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    versions = {}
    for package in ("torch", "transformers", "dvc", "polars", "zarr", "numpy", "pillow"):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            versions[package] = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": memory_gb,
        "gpu": gpu.name,  # "name, memory MiB, driver" or null
        "gpu_idle_mib": gpu.idle_mib(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
    }


def _fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def table(runs: list[StageRun], gpu: bool) -> str:
    """The markdown table: one row per stage, the totals last."""
    head = (
        "| stage | wall s | work | throughput | GPU util % mean / max | GPU mem peak GiB "
        "| host RSS peak GiB (largest process / all) | fixed s | NATIX work | projected NATIX s |"
    )
    lines = [head, "|" + "---|" * 10]
    for r in runs:
        work = f"{r.units:,.0f} {r.unit}" if r.unit else "-"
        rate = f"{r.units / r.wall_s:,.1f} {r.unit}/s" if r.unit else "-"
        util = f"{_fmt(r.gpu_util_mean, 0)} / {_fmt(r.gpu_util_max, 0)}" if gpu else "n/a"
        memory = _fmt(r.gpu_mem_peak_mib / 1024, 2) if gpu and r.gpu_mem_peak_mib is not None else "n/a"
        rss = f"{r.rss_peak_mib / 1024:.2f} / {r.tree_rss_peak_mib / 1024:.2f}"
        natix = f"{r.natix_units:,.0f}" if r.unit else "-"
        projected = "(not projected)" if r.projected_s is None else _fmt(r.projected_s)
        fixed = "-" if r.projected_s is None else _fmt(r.fixed_s)
        lines.append(
            f"| {r.stage} | {r.wall_s:.1f} | {work} | {rate} | {util} | {memory} | {rss} | {fixed} "
            f"| {natix} | {projected} |"
        )
    measured = sum(r.wall_s for r in runs)
    projected = sum(r.projected_s for r in runs if r.projected_s is not None)
    without_synth = sum(r.wall_s for r in runs if r.stage != "synth")
    lines.append(
        f"| **total** | {measured:.1f} ({without_synth:.1f} without synth) | | | | | | | "
        f"| **{projected:,.0f} ({projected / 60:.1f} min)** |"
    )
    return "\n".join(lines)


FORMULA = (
    "projected = fixed + (wall - fixed) x NATIX work / measured work; wall - fixed is the stage's "
    "progress loop at its steady rate (after the loop's first line), or, for a stage without one, "
    "wall - {startup:.1f} s (a bare Python start-up with torch, polars, roadwork); config, backbone "
    "and sam are constant; NATIX = 6,251 train + 2,298 test images"
)


# ---------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--fraction", type=float, default=0.01, help="share of NATIX's split sizes")
    parser.add_argument("--scale", type=float, default=1.0, help="synth.scale (1.0: real frame sizes)")
    parser.add_argument("--phone-share", type=float, help="synth.phone_share (default: config.yaml's)")
    parser.add_argument("--full", action="store_true", help="ViT-H+/16 and SAM 3, real-run settings (GPU)")
    parser.add_argument("--workers", type=int, help="DataLoader workers (--full default: min(12, cores - 2))")
    parser.add_argument("--members", nargs="+", help="ensemble members to train (default: all)")
    parser.add_argument("--epochs", type=int, help="train.epochs (default: config.yaml's)")
    parser.add_argument("--side", type=int, help="extract.side (default: config.yaml's; 512 with --full)")
    parser.add_argument("--tiny-sam-side", type=int, help="masks.tiny.image_size (tiny SAM 3 only)")
    parser.add_argument("--device", help="device of every model stage (default: auto / cuda with --full)")
    parser.add_argument("--bootstrap", type=int, help="submit.bootstrap resamples (default: config's)")
    parser.add_argument("--workdir", type=Path, help="build the project here (default: a temporary dir)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary project directory")
    parser.add_argument("--out", type=Path, help="write the JSON result here")
    args = parser.parse_args(argv)
    if args.full and args.workers is None:
        args.workers = max(1, min(12, (os.cpu_count() or 1) - 2))
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.full:
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--full runs the real architectures: it needs a GPU")
    gpu = GpuMonitor()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="campaign-"))
    workdir.mkdir(parents=True, exist_ok=True)
    project_dir = workdir / "project"
    if project_dir.exists():
        raise SystemExit(f"{project_dir} exists; give an empty --workdir")
    project_dir.mkdir()
    try:
        result = campaign(args, workdir, project_dir, gpu)
    finally:
        gpu.stop()
        if args.workdir is None and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.keep or args.workdir:
        print(f"project kept in {project_dir}")
    return result


def campaign(args: argparse.Namespace, workdir: Path, project_dir: Path, gpu: GpuMonitor) -> dict[str, Any]:
    started = datetime.datetime.now(datetime.UTC)
    models = {"backbone": "tiny", "masks": "tiny"}
    prepare_s = 0.0
    if args.full:
        start = time.perf_counter()
        models = build_full_models(workdir / "models")
        prepare_s = time.perf_counter() - start
        print(f"campaign: random ViT-H+/16 and SAM 3 saved in {prepare_s:.0f} s", flush=True)
    params = campaign_params(args, models)
    make_project(project_dir, params)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
    }
    startup = startup_seconds(env, project_dir)
    rows = params["synth"]["rows"]
    print(
        f"campaign: {rows['train']} train + {rows['test']} test images ({args.fraction:g} of NATIX), "
        f"scale {args.scale:g}, backbone {Path(models['backbone']).name}, "
        f"SAM 3 {Path(models['masks']).name}, "
        f"side {params['extract']['side']}, {len(params['ensemble']['members'])} member(s); "
        f"start-up floor {startup:.1f} s; in {project_dir}",
        flush=True,
    )
    runs = []
    for name, argv in stage_commands(params):
        run = run_stage(name, argv, project_dir, env, gpu)
        runs.append(run)
        print(f"campaign: {name:<20} {run.wall_s:8.1f} s", flush=True)

    from roadwork.data.index import read_index

    index = read_index(project_dir / params["paths"]["prepared"])
    counts = {split: int((index["split"] == split).sum()) for split in NATIX}
    project(runs, params, counts, startup)
    text = table(runs, gpu.available)
    formula = FORMULA.format(startup=startup)
    print()
    print(text)
    print(f"\n{formula}")
    result = {
        "command": " ".join(["python", "bench/campaign.py", *sys.argv[1:]]),
        "date": started.isoformat(timespec="seconds"),
        "machine": machine_info(gpu),
        "settings": {
            "fraction": args.fraction,
            "scale": args.scale,
            "rows": rows,
            "phone_share": params["synth"]["phone_share"],
            "backbone": Path(models["backbone"]).name,
            "masks": Path(models["masks"]).name,
            "extract_side": params["extract"]["side"],
            "backbone_dtype": params["backbone"]["dtype"],
            "extract_compile": params["extract"]["compile"],
            "workers": {name: params[name]["workers"] for name in ("extract", "masks", "tta")},
            "members": list(params["ensemble"]["members"]),
            "epochs": params["train"]["epochs"],
            "tta_augmentations": len(params["tta"]["augmentations"]),
        },
        "indexed": counts,
        "prepare_models_s": prepare_s,
        "startup_s": startup,
        "stages": [asdict(r) for r in runs],
        "projection": {
            "natix": NATIX,
            "formula": formula,
            "total_s": sum(r.projected_s for r in runs if r.projected_s is not None),
        },
        "measured_total_s": sum(r.wall_s for r in runs),
        "table": text,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
