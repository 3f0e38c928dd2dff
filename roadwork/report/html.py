"""The error-analysis page: one self-contained HTML file (inline CSS, images as data URIs, no script).

Every piece of text that reaches the page goes through `html.escape`; the only links are anchors
within the page. `render_report` turns a `ReportData` into the page; the figures and tables come from
`roadwork.report.figures` and `roadwork.report.analysis`.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from roadwork.report import analysis, figures
from roadwork.report.gallery import GalleryItem
from roadwork.scoring import NO_LEVEL

SECTIONS = {
    "validator": "Validator challenges",
    "final": "Final metrics",
    "slices": "Metrics per slice",
    "confusion": "Confusion matrix",
    "curves": "ROC and precision-recall",
    "calibration": "Calibration",
    "gps": "GPS map",
    "training": "Training curves",
    "gallery": "Failure gallery",
    "ablations": "Ablations",
}
HEADLINE = ("mcc", "accuracy", "f1", "roc_auc", "brier", "reward")
CSS = "".join(
    (
        "body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1200px;padding:0 20px 40px;",
        "color:#222;background:#fff}",
        "h1{margin:24px 0 4px}h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:36px}",
        "h3{margin:18px 0 6px}nav a{margin-right:12px}table{border-collapse:collapse;margin:8px 0}",
        "th,td{border:1px solid #ddd;padding:3px 8px;text-align:left}th{background:#f3f3f3}",
        "td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}.note{color:#555;font-style:italic}",
        ".grid{display:flex;flex-wrap:wrap;gap:16px}",
        ".card{border:1px solid #ddd;border-radius:6px;padding:8px;width:560px}",
        ".card img{float:left;margin-right:10px}.card dl{margin:0;font-size:12px}",
        ".card dt{font-weight:bold;float:left;margin-right:4px}.card dd{margin:0 0 2px}",
        ".gates{clear:both;font-size:11px;padding-top:6px}.gates td{border:none;padding:0 4px}",
        ".bar{display:inline-block;height:9px;background:#3182bd}",
        ".swatch{display:inline-block;width:10px;height:10px;margin-right:4px}img{max-width:100%;height:auto}",
    )
)


@dataclass(frozen=True)
class ReportConfig:
    """The `report` section of params.yaml."""

    gallery: int  # the worst false positives shown, and as many false negatives
    thumb_width: int  # gallery thumbnail width in pixels (JPEG)
    bins: int  # equal-width probability bins of the reliability diagram
    ablations: str  # markdown file with the ablation table(s); optional: a note when it does not exist

    def __post_init__(self) -> None:
        if self.gallery < 0:
            raise ValueError(f"report.gallery: expected >= 0, got {self.gallery}")
        if not 64 <= self.thumb_width <= 1024:
            raise ValueError(f"report.thumb_width: expected 64-1024 pixels, got {self.thumb_width}")
        if not 2 <= self.bins <= 50:
            raise ValueError(f"report.bins: expected 2-50, got {self.bins}")


@dataclass
class ReportData:
    """Everything the page shows, already read from the pipeline's outputs."""

    final: dict[str, Any]  # <submission>/scores.json
    test: pl.DataFrame  # analysis.scored_frame of the ensemble's test predictions
    threshold: float
    bins: int  # reliability diagram bins
    points: pl.DataFrame  # split, lat, lon, cluster of every index row with GPS
    clusters: pl.DataFrame  # gps clusters: cluster, lat, lon, n_test_rows, n_train_rows
    curves: dict[str, dict[str, pl.DataFrame]]  # member -> dvclive step metrics
    gallery: list[GalleryItem]
    view_names: list[str]
    gallery_notes: list[str] = field(default_factory=list)
    ablations: list[list[list[str]]] | None = None  # markdown tables, None when the doc does not exist
    ablations_source: str = ""
    missing_curves: list[str] = field(default_factory=list)  # members without dvclive logs
    validator: dict[str, Any] | None = None  # <validation>/details.json; None before `validate` ran
    validator_worst: list[dict[str, Any]] = field(default_factory=list)  # the worst challenges, as sent


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def table(header: Sequence[Any], rows: Iterable[Sequence[Any]], numeric: Sequence[bool] | None = None) -> str:
    """An HTML table; every cell escaped; `numeric` columns right-aligned."""
    numeric = list(numeric or [False] * len(header))
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="num">{esc(c)}</td>' if numeric[i] else f"<td>{esc(c)}</td>"
            for i, c in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def img(uri: str, alt: str, width: int | None = None) -> str:
    if not uri.startswith("data:image/"):
        raise ValueError(f"img: only inline data URIs may appear in the report, got {uri[:40]!r}")
    size = f' width="{int(width)}"' if width else ""
    return f'<img src="{esc(uri)}" alt="{esc(alt)}"{size}>'


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def section(key: str, body: str) -> str:
    return f'<section id="{esc(key)}"><h2>{esc(SECTIONS[key])}</h2>{body}</section>'


def fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.{digits}f}"


def with_ci(scores: dict[str, Any], name: str) -> str:
    """ "0.599 [0.487, 0.708]": the value and its interval (`<name>_lo` / `_hi`)."""
    lo, hi = scores.get(f"{name}_lo"), scores.get(f"{name}_hi")
    return fmt(scores.get(name)) + ("" if lo is None or hi is None else f" [{fmt(lo)}, {fmt(hi)}]")


def final_section(final: dict[str, Any]) -> str:
    # Validation of the plain ensemble, then every test variant `submit` scored (the submitted one marked).
    parts = [("validation, ensemble", final.get("val"))]
    for name, scores in final["variants"].items():
        label = f"best single member ({final['chosen'][0]})" if name == "best_single" else name
        parts.append((f"test, {label}" + (" (submitted)" if name == final["use"] else ""), scores))
    if "image_only" in final:  # what `roadwork predict` answers the test images as plain full-size files
        image_only = final["image_only"]
        parts.append((f"test without metadata, image-only choice ({', '.join(image_only['served'])})",
                      image_only["test"]))  # fmt: skip
    rows = [
        [name, scores["n"], scores["positives"], *(with_ci(scores, m) for m in HEADLINE)]
        for name, scores in parts
        if scores
    ]
    body = table(["", "n", "roadwork", *HEADLINE], rows, [False, True, True, *[True] * len(HEADLINE)])
    body += note("95 % bootstrap intervals over groups (frames of one video resample together).")
    missing = [name for name, scores in parts if not scores]
    if missing:
        body += note("No labelled rows for: " + ", ".join(missing))
    ranking = sorted(final["members"].items(), key=lambda kv: (-kv[1], kv[0]))
    members = [[i + 1, m, fmt(v), "yes" if m in final["chosen"] else ""] for i, (m, v) in enumerate(ranking)]
    body += "<h3>Members by validation MCC</h3>" + table(
        ["rank", "member", "val MCC", "chosen"], members, [True, False, True, False]
    )
    return section("final", body)


def slices_section(slices: dict[str, pl.DataFrame]) -> str:
    header = ["value", "n", "roadwork", "predicted", "false pos.", "false neg.", "accuracy", "MCC"]
    numeric = [False, *[True] * 7]
    body = note(
        "Test split, ensemble predictions. MCC is '—' where undefined (one class only among the "
        "slice's labels or predictions); small slices are noisy."
    )
    for name, frame in slices.items():
        rows = [
            [
                r["value"],
                r["n"],
                r["positives"],
                r["predicted"],
                r["fp"],
                r["fn"],
                fmt(r["accuracy"]),
                fmt(r["mcc"]),
            ]
            for r in frame.iter_rows(named=True)
        ]
        body += f"<h3>{esc(name)}</h3>" + table(header, rows, numeric)
    return section("slices", body)


def confusion_section(counts: dict[str, int], threshold: float) -> str:
    rows = [["true none", counts["tn"], counts["fp"]], ["true roadwork", counts["fn"], counts["tp"]]]
    body = table(["", "predicted none", "predicted roadwork"], rows, [False, True, True])
    body += img(figures.confusion_figure(counts), "confusion matrix")
    return section("confusion", body + note(f"Test split; roadwork when probability > {threshold:g}."))


def curves_section(test: pl.DataFrame) -> str:
    label, prob = test["label"].to_numpy().astype(int), test["prob"].to_numpy()
    if not 0 < label.sum() < len(label):
        return section(
            "curves", note("The test split holds one class only: no ROC or precision-recall curve.")
        )
    return section("curves", img(figures.roc_pr_figure(label, prob), "ROC and precision-recall curves"))


def calibration_section(test: pl.DataFrame, bins: int) -> str:
    bins_table = analysis.reliability(test, bins)
    rows = [
        [f"{r['lo']:.2f}-{r['hi']:.2f}", r["n"], fmt(r["mean_prob"]), fmt(r["positive_rate"])]
        for r in bins_table.iter_rows(named=True)
    ]
    body = img(figures.reliability_figure(bins_table), "reliability diagram")
    body += table(
        ["probability bin", "images", "mean probability", "roadwork rate"], rows, [False, True, True, True]
    )
    return section("calibration", body)


def gps_section(points: pl.DataFrame, clusters: pl.DataFrame) -> str:
    if points.is_empty():
        return section("gps", note("No row carries GPS."))
    rows = [
        [r["cluster"], fmt(r["lat"], 4), fmt(r["lon"], 4), r["n_test_rows"], r["n_train_rows"]]
        for r in clusters.iter_rows(named=True)
    ]
    body = img(figures.gps_map_figure(points, clusters), "GPS map of train and test rows")
    body += table(["cluster", "lat", "lon", "test rows", "train rows"], rows, [True] * 5)
    return section("gps", body)


def training_section(
    curves: dict[str, dict[str, pl.DataFrame]], chosen: list[str], missing: list[str]
) -> str:
    body = img(figures.training_curves_figure(curves, chosen), "training curves") if curves else ""
    if missing:
        body += note("No training logs for: " + ", ".join(missing))
    return section("training", body or note("No training logs found."))


def _gates_html(gates: list[float | None], names: list[str]) -> str:
    """Gate per view as a bar, two views per row."""
    cells = []
    for name, g in zip(names, gates, strict=True):
        bar = "pruned" if g is None else f'<span class="bar" style="width:{round(100 * g)}px"></span> {g:.1%}'
        cells.append(f"<td>{esc(name)}</td><td>{bar}</td>")
    rows = ["<tr>" + "".join(cells[k : k + 2]) + "</tr>" for k in range(0, len(cells), 2)]
    return f'<div class="gates"><table>{"".join(rows)}</table></div>'


def _card(item: GalleryItem, names: list[str]) -> str:
    info = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v or '—')}</dd>" for k, v in item.info.items())
    head = f"<dt>probability</dt><dd>{item.prob:.3f} (label {item.label})</dd>"
    head += f"<dt>image</dt><dd>{esc(item.image_id[:16])}</dd>"
    extra = ""
    if item.masks:
        extra += (
            '<div class="gates">'
            + " ".join(
                f'<span class="swatch" style="background:{esc(colour)}"></span>{esc(prompt)} {share:.1%}'
                for prompt, colour, share in item.masks
            )
            + "</div>"
        )
    if item.gates is not None:
        extra += _gates_html(item.gates, names)
    picture = img(item.thumbnail, f"{item.kind} {item.image_id[:12]}")
    return f'<div class="card">{picture}<dl>{head}{info}</dl>{extra}</div>'


def gallery_section(items: list[GalleryItem], names: list[str], notes: list[str]) -> str:
    body = "".join(note(n) for n in notes)
    for kind in dict.fromkeys(i.kind for i in items):
        cards = "".join(_card(i, names) for i in items if i.kind == kind)
        body += f'<h3>{esc(kind)}s</h3><div class="grid">{cards}</div>'
    return section("gallery", body or note("No errors on the test split."))


def ablations_section(tables: list[list[list[str]]] | None, source: str) -> str:
    if tables is None:
        return section("ablations", note(f"{source} does not exist yet: no ablation table."))
    if not tables:
        return section("ablations", note(f"{source} holds no table."))
    body = "".join(table(t[0], [r + [""] * (len(t[0]) - len(r)) for r in t[1:]]) for t in tables)
    return section("ablations", body + note(f"From {source}."))


def validator_section(details: dict[str, Any] | None, worst: list[dict[str, Any]]) -> str:
    """The served model as a StreetVision validator scores it, and the challenges it got most wrong."""
    if details is None:
        return section("validator", note("The validate stage has not run: no validator-style scores."))
    groups = {}
    for protocol, block in details["protocols"].items():  # crop, letterbox, native (shared VALIDATOR.md)
        groups |= {protocol: block["all"], **{f"{protocol}, {k}": v for k, v in block["domains"].items()}}
        groups |= {f"{protocol}, level {k}": v for k, v in block["levels"].items() if k != NO_LEVEL}
        groups |= {
            f"{protocol}, {k.replace('/', ', level ')}": v
            for k, v in block["cells"].items()
            if not k.endswith(f"/{NO_LEVEL}")
        }
    rows = [
        [name, s["n"], with_ci(s, "mcc"), fmt(s["accuracy"]), with_ci(s, "reward")]
        for name, s in groups.items()
    ]
    body = table(
        ["challenges", "n", "MCC (floored)", "accuracy", "reward"], rows, [False, True, True, True, True]
    )
    if not details.get("generated_half"):
        body += note("No generated half: the real half is scored alone.")
    cards = "".join(
        f'<div class="card">{img(w["uri"], w["file"], 224)}<dl><dt>label</dt><dd>{w["label"]}</dd>'
        f"<dt>answer</dt><dd>{w['prob']:.3f}</dd><dt>level</dt><dd>{w['level']}</dd>"
        f"<dt>domain</dt><dd>{esc(w['domain'])}</dd></dl></div>"
        for w in worst
    )
    body += "<h3>The most confident mistakes, as the validator sent them (224 px JPEG)</h3>"
    return section("validator", body + f'<div class="grid">{cards}</div>')


def render_report(data: ReportData) -> str:
    """The whole page."""
    counts = analysis.confusion(data.test, data.threshold)
    nav = "".join(f'<a href="#{esc(k)}">{esc(t)}</a>' for k, t in SECTIONS.items())
    chosen = ", ".join(data.final["chosen"])
    served = data.final.get("served", {}).get("members", data.final["chosen"])
    body = [
        f"<h1>roadwork: error analysis</h1><p>Served: {esc(', '.join(served))} (chosen for the "
        f"{esc(data.final.get('target', 'natix'))} target). NATIX test sections: the ensemble of "
        f"{esc(chosen)} (chosen by validation MCC with metadata); {len(data.test)} labelled test images; "
        f"threshold {data.threshold:g}.</p><nav>{nav}</nav>",
        validator_section(data.validator, data.validator_worst),
        final_section(data.final),
        slices_section(analysis.all_slices(data.test, data.threshold)),
        confusion_section(counts, data.threshold),
        curves_section(data.test),
        calibration_section(data.test, data.bins),
        gps_section(data.points, data.clusters),
        training_section(data.curves, data.final["chosen"], data.missing_curves),
        gallery_section(data.gallery, data.view_names, data.gallery_notes),
        ablations_section(data.ablations, data.ablations_source),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>roadwork error analysis</title><style>{CSS}</style></head><body>"
        + "\n".join(body)
        + "</body></html>\n"
    )
