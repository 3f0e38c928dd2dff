"""What `bench/campaign.py` measures of one stage: wall time, start-up, sampled work, host memory of the
process tree and, with a GPU, its utilisation and memory (`nvidia-smi`); and the machine it ran on."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

POLL_S = 0.2  # seconds between samples of GPU use and of the process tree's memory


# `python -m MODULE ARGS...`, run as -m runs it, with two probes: the time the module's own imports are
# done (the start-up), and a 10 ms sampler of the main thread's stack that adds up the time spent outside
# imports, model / head loading and torch.compile's compilation (the stage's work: what grows with the
# data), printed at exit.
STAGE_WRAPPER = """
import atexit, importlib, runpy, sys, threading, time
module = sys.argv[1]
sys.argv = [module, *sys.argv[2:]]
LOADING = {"from_pretrained", "load_model", "load_encoder", "load_backbone", "load_sam", "load_head",
           "load_state_dict"}
COMPILING = ("/torch/_dynamo/convert_frame.py", "/torch/_inductor/compile_fx.py")
main, work = threading.get_ident(), [0.0]
def fixed(frame):
    while frame is not None:
        code = frame.f_code
        if code.co_name in LOADING or code.co_filename.startswith("<frozen importlib"):
            return True
        if code.co_filename.endswith(COMPILING):
            return True
        frame = frame.f_back
    return False
def sample():
    last = time.perf_counter()
    while True:
        time.sleep(0.01)
        now = time.perf_counter()
        if not fixed(sys._current_frames().get(main)):
            work[0] += now - last
        last = now
threading.Thread(target=sample, daemon=True).start()
atexit.register(lambda: print(f"campaign: work {work[0]:.3f}", flush=True))
importlib.import_module(module)
print(f"campaign: imported {time.time():.6f}", flush=True)
del sys.modules[module]  # run it afresh as __main__ (its imports are cached by now)
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""
_IMPORTED = re.compile(r"^campaign: imported (\d+\.\d+)$", re.MULTILINE)
_WORK = re.compile(r"^campaign: work (\d+\.\d+)$", re.MULTILINE)


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
            [*query, "--query-gpu=utilization.gpu,memory.used", f"--loop-ms={int(POLL_S * 1000)}"],
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
    startup_s: float | None = None  # process start to the stage module imported (STAGE_WRAPPER)
    sampled_work_s: float | None = None  # main thread outside imports, loading, compiling (STAGE_WRAPPER)
    unit: str = ""
    units: float = 0.0
    natix_units: float = 0.0
    fixed_s: float = 0.0
    variable_s: float = 0.0
    projection: str = ""  # constant | sampled | linear (no sample: all of it grows) | "" (synth)
    projected_s: float | None = None


def run_stage(name: str, argv: list[str], cwd: Path, env: dict[str, str], gpu: GpuMonitor) -> StageRun:
    """Run one stage to completion (its output in `logs/<name>.log`); its time, memory and GPU use."""
    log = cwd / "logs" / f"{name}.log"
    log.parent.mkdir(exist_ok=True)
    peak_tree = 0.0
    with log.open("w") as out:
        start, started = time.perf_counter(), time.time()
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
    imported = _IMPORTED.search(text)
    if imported:
        run.startup_s = max(0.0, float(imported[1]) - started)
    work = _WORK.search(text)
    if work:
        run.sampled_work_s = min(run.wall_s, float(work[1]))
    return run


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
        "load_average": os.getloadavg(),  # other work on the machine (at the end of the campaign)
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
    }
