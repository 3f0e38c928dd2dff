"""The campaign's projection to NATIX size (`FORMULA`, `FORMULA_FIT`) and its markdown table."""

from __future__ import annotations

from typing import Any

from bench.campaign_probe import StageRun

NATIX = {"train": 6251, "test": 2298}  # natix-network-org/roadwork: 8,549 labelled images
CONSTANT = ("config", "backbone", "sam")  # work that does not grow with the data


def work_units(params: dict[str, Any], counts: dict[str, int], views: int) -> dict[str, tuple[str, float]]:
    """(unit, amount) of the work of each data-dependent stage for the given split sizes."""
    train, test = counts["train"], counts["test"]
    copies = 1 + params["extract"]["aug_copies"] + params["extract"].get("challenge_copies", 0)
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


def stage_units(stage: str, units: dict[str, tuple[str, float]], counts: dict[str, int]) -> tuple[str, float]:
    """A stage's work; a stage `work_units` does not know (a new one) counts images."""
    return units.get(stage, ("images", counts["train"] + counts["test"]))


def project(runs: list[StageRun], params: dict[str, Any], counts: dict[str, int]) -> None:
    """Fill in each run's work units and its projection to NATIX from this one run (`FORMULA`)."""
    from roadwork.config import section
    from roadwork.views.plan import ViewsConfig, n_views

    views = n_views(section(ViewsConfig, params, "views"))
    measured = work_units(params, counts, views)
    natix = work_units(params, NATIX, views)
    for run in runs:
        if run.stage == "synth":  # the stand-in for the download
            continue
        if run.stage in CONSTANT:
            run.projection, run.fixed_s, run.projected_s = "constant", run.wall_s, run.wall_s
            continue
        run.unit, run.units = stage_units(run.stage, measured, counts)
        run.natix_units = stage_units(run.stage, natix, NATIX)[1]
        ratio = run.natix_units / max(run.units, 1e-9)
        if run.sampled_work_s is None:  # a command other than `python -m`: all of it grows
            run.projection, run.variable_s = "linear", run.wall_s
        else:
            run.projection, run.variable_s = "sampled", run.sampled_work_s
        run.fixed_s = run.wall_s - run.variable_s
        run.projected_s = run.fixed_s + run.variable_s * ratio


def fit(small: list[StageRun], large: list[StageRun]) -> None:
    """Replace the projections of `large` by a line through both sizes' wall times (`FORMULA_FIT`):
    wall = fixed + per_unit x units, per_unit >= 0 and fixed >= 0."""
    by_name = {run.stage: run for run in small}
    for run in large:
        other = by_name.get(run.stage)
        if other is None or run.projection in ("", "constant") or run.units <= other.units:
            continue
        per_unit = max(0.0, (run.wall_s - other.wall_s) / (run.units - other.units))
        fixed = run.wall_s - per_unit * run.units
        if fixed < 0:  # steeper than proportional: proportional through the larger run
            fixed, per_unit = 0.0, run.wall_s / run.units
        run.projection, run.fixed_s, run.variable_s = "fit", fixed, run.wall_s - fixed
        run.projected_s = fixed + per_unit * run.natix_units


def _fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def _projected(run: StageRun) -> str:
    if run.projected_s is None:
        return "-"
    return f"{run.projected_s:,.0f}" + (" (constant)" if run.projection == "constant" else "")


def totals(runs: list[StageRun]) -> dict[str, float]:
    return {
        "measured_s": sum(r.wall_s for r in runs),
        "measured_without_synth_s": sum(r.wall_s for r in runs if r.stage != "synth"),
        "projected_s": sum(r.projected_s for r in runs if r.projected_s is not None),
    }


def table(runs: list[StageRun], gpu: bool, smaller: list[StageRun] | None = None) -> str:
    """The markdown table: one row per stage, the totals last; with `smaller` (a run at a smaller
    fraction), its wall times and work units beside this run's."""
    before = {r.stage: r for r in smaller or []}
    head = (
        "| stage | wall s | start-up s | work s | work units | throughput | GPU util % mean / max "
        "| GPU mem peak GiB | host RSS peak GiB, largest process / all | NATIX work units "
        "| projected NATIX s |"
    )
    lines = [head, "|" + "---|" * 11]
    for r in runs:
        other = before.get(r.stage)
        wall = f"{other.wall_s:.1f} / {r.wall_s:.1f}" if other else f"{r.wall_s:.1f}"
        work = f"{r.units:,.0f} {r.unit}" if r.unit else "-"
        if other and r.unit:
            work = f"{other.units:,.0f} / {work}"
        rate = f"{r.units / r.wall_s:,.1f} {r.unit}/s" if r.unit else "-"
        util = f"{_fmt(r.gpu_util_mean, 0)} / {_fmt(r.gpu_util_max, 0)}" if gpu else "n/a"
        memory = _fmt(r.gpu_mem_peak_mib / 1024, 2) if gpu and r.gpu_mem_peak_mib is not None else "n/a"
        rss = f"{r.rss_peak_mib / 1024:.2f} / {r.tree_rss_peak_mib / 1024:.2f}"
        natix = f"{r.natix_units:,.0f}" if r.unit else "-"
        lines.append(
            f"| {r.stage} | {wall} | {_fmt(r.startup_s)} | {_fmt(r.sampled_work_s)} | {work} "
            f"| {rate} | {util} | {memory} | {rss} | {natix} | {_projected(r)} |"
        )
    t = totals(runs)
    lines.append(
        f"| **total** | {t['measured_s']:.1f} ({t['measured_without_synth_s']:.1f} without synth) "
        f"| | | | | | | | | **{t['projected_s']:,.0f} ({t['projected_s'] / 60:.1f} min)** |"
    )
    return "\n".join(lines)


FORMULA = """\
Projection to NATIX (6,251 train + 2,298 test images), per stage:
  projected = fixed + work x NATIX work units / measured work units
  work: the stage's main thread outside imports, model and head loading and torch.compile's
  compilation (its stack sampled every 10 ms); fixed = wall - work. config, backbone and sam do not
  grow with the data (projected = wall); synth, the data written here (the download of a real run), is
  not projected. The total is the sum: it assumes the per-unit costs stay those measured here."""


FORMULA_FIT = """\
Projection to NATIX (6,251 train + 2,298 test images), per stage, from the runs at both fractions:
  projected = fixed + per_unit x NATIX work units
  per_unit = (wall_large - wall_small) / (units_large - units_small), fixed = wall_large - per_unit x
  units_large (both >= 0). Early stopping is off and finetune / tta adapt the first top_k full heads in
  both runs, so both do the same work per unit. config, backbone and sam do not grow with the data
  (projected = wall); synth, the data written here (the download of a real run), is not projected. The
  total is the sum; the other columns are the larger run's."""
