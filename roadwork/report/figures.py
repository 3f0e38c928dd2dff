"""The report's figures: matplotlib (Agg, no pyplot state) rendered to PNG data URIs.

PNG bytes are a function of the data alone: no date or software metadata is written, and the
figures use the built-in DejaVu font, so the same inputs give the same page byte for byte.
"""

from __future__ import annotations

import base64
import io
import math

import matplotlib

matplotlib.use("Agg")  # no display: the report is rendered in a pipeline stage

import numpy as np
import polars as pl
from matplotlib.figure import Figure
from sklearn.metrics import precision_recall_curve, roc_auc_score, roc_curve

matplotlib.rcParams["svg.hashsalt"] = "roadwork"  # stable ids should a figure ever be saved as SVG
DPI = 100
GATE_STATS_PREFIX = "gates_"  # train/gates_* are view-gate diagnostics, not loss terms
CLUSTER_COLOURS = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666")


def data_uri(data: bytes, mime: str) -> str:
    """`data:<mime>;base64,...`: the page carries its images inline."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def png_uri(fig: Figure) -> str:
    """The figure as a PNG data URI, without metadata (deterministic bytes)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return data_uri(buffer.getvalue(), "image/png")


def confusion_figure(counts: dict[str, int]) -> str:
    """2x2 confusion matrix heat map, rows = true label, columns = prediction."""
    grid = np.array([[counts["tn"], counts["fp"]], [counts["fn"], counts["tp"]]])
    fig = Figure(figsize=(3.8, 3.4), layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(grid, cmap="Blues", vmin=0, vmax=max(1, int(grid.max())))
    for (r, c), v in np.ndenumerate(grid):
        dark = v > grid.max() / 2
        ax.text(c, r, str(v), ha="center", va="center", fontsize=14, color="white" if dark else "black")
    ax.set_xticks([0, 1], ["none", "roadwork"])
    ax.set_yticks([0, 1], ["none", "roadwork"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    return png_uri(fig)


def roc_pr_figure(label: np.ndarray, prob: np.ndarray) -> str:
    """ROC and precision-recall curves side by side (both need the two classes)."""
    fig = Figure(figsize=(9, 3.8), layout="constrained")
    roc_ax, pr_ax = fig.subplots(1, 2)
    fpr, tpr, _ = roc_curve(label, prob)
    roc_ax.plot(fpr, tpr, color="#1f77b4", label=f"AUC {roc_auc_score(label, prob):.3f}")
    roc_ax.plot([0, 1], [0, 1], color="#999999", linestyle="--", linewidth=1)
    roc_ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC", aspect="equal")
    roc_ax.legend(loc="lower right")
    precision, recall, _ = precision_recall_curve(label, prob)
    base = float(np.mean(label))
    pr_ax.plot(recall, precision, color="#d62728")
    pr_ax.axhline(base, color="#999999", linestyle="--", linewidth=1, label=f"base rate {base:.2f}")
    pr_ax.set(xlabel="recall", ylabel="precision", title="precision-recall", xlim=(0, 1), ylim=(0, 1.02))
    pr_ax.legend(loc="lower left")
    return png_uri(fig)


def reliability_figure(table: pl.DataFrame) -> str:
    """Reliability diagram (observed roadwork rate per probability bin, with counts) over a histogram."""
    fig = Figure(figsize=(5.5, 5.5), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    lo, hi, n = table["lo"].to_numpy(), table["hi"].to_numpy(), table["n"].to_numpy()
    rate = table["positive_rate"].fill_null(np.nan).to_numpy()
    mean = table["mean_prob"].fill_null(np.nan).to_numpy()
    width = hi - lo
    top.bar(lo, np.nan_to_num(rate), width=width, align="edge", color="#9ecae1", edgecolor="#3182bd")
    top.plot([0, 1], [0, 1], color="#999999", linestyle="--", linewidth=1, label="perfect calibration")
    top.plot(mean, rate, marker="o", color="#08519c", label="mean probability vs rate")
    for x, r, count in zip(lo + width / 2, rate, n, strict=True):
        if count:
            top.text(x, min(r, 0.93) + 0.02, str(count), ha="center", fontsize=7)
    top.set(ylabel="observed roadwork rate", ylim=(0, 1.05), title="reliability (numbers: images per bin)")
    top.legend(loc="upper left", fontsize=8)
    bottom.bar(lo, n, width=width, align="edge", color="#bdbdbd", edgecolor="#636363")
    bottom.set(xlabel="predicted roadwork probability", ylabel="images", xlim=(0, 1))
    return png_uri(fig)


def _gps_panel(ax, points: pl.DataFrame, clusters: pl.DataFrame, legend: bool) -> None:
    """Train rows grey, test rows coloured by cluster, centres as thin crosses (points stay visible)."""
    train = points.filter(pl.col("split") != "test")
    ax.scatter(train["lon"], train["lat"], s=6, color="#aaaaaa", alpha=0.6, label=f"train ({len(train)})")
    test = points.filter(pl.col("split") == "test")
    for k in sorted(test["cluster"].drop_nulls().unique().to_list()):
        part = test.filter(pl.col("cluster") == k)
        colour = CLUSTER_COLOURS[k % len(CLUSTER_COLOURS)]
        ax.scatter(part["lon"], part["lat"], s=12, color=colour, label=f"test, cluster {k} ({len(part)})")
    ax.scatter(clusters["lon"], clusters["lat"], s=160, marker="x", linewidths=2, color="black", zorder=3,
               label="k-means centres")  # fmt: skip
    for row in clusters.iter_rows(named=True):
        ax.annotate(str(row["cluster"]), (row["lon"], row["lat"]), xytext=(6, 6), textcoords="offset points")
    # Degrees of longitude shrink with latitude: equal ground distances look equal.
    mid = float(np.nanmean(points["lat"].to_numpy())) if len(points) else 0.0
    ax.set_aspect(1.0 / max(math.cos(math.radians(mid)), 0.1), adjustable="datalim")
    ax.tick_params(labelsize=7)
    if legend:
        ax.legend(loc="best", fontsize=8)


def _window(part: pl.DataFrame, margin: float = 0.25, min_span: float = 0.02) -> tuple[float, ...]:
    """(lat0, lat1, lon0, lon1) around `part`'s points, padded, at least `min_span` degrees wide."""
    bounds = []
    for col in ("lat", "lon"):
        lo, hi = float(part[col].min()), float(part[col].max())
        pad = max((hi - lo) * margin, (min_span - (hi - lo)) / 2, 0.0)
        bounds += [lo - pad, hi + pad]
    return tuple(bounds)


def gps_map_figure(points: pl.DataFrame, clusters: pl.DataFrame) -> str:
    """All rows with GPS on one map, then one zoomed panel per test cluster (train rows in its window).

    `points`: split, lat, lon, cluster (rows without GPS already dropped).
    """
    cols = max(1, min(len(clusters), 5))
    zoom_rows = math.ceil(len(clusters) / cols)
    fig = Figure(figsize=(10, 4.5 + 2.6 * zoom_rows), layout="constrained")
    grid = fig.add_gridspec(1 + zoom_rows, cols, height_ratios=[4.5] + [2.6] * zoom_rows)
    overview = fig.add_subplot(grid[0, :])
    _gps_panel(overview, points, clusters, legend=True)
    overview.set(xlabel="longitude", ylabel="latitude", title="all rows with GPS")
    test = points.filter(pl.col("split") == "test")
    for i, row in enumerate(clusters.iter_rows(named=True)):
        members = test.filter(pl.col("cluster") == row["cluster"])
        lat0, lat1, lon0, lon1 = _window(
            members if len(members) else clusters.filter(pl.col("cluster") == row["cluster"])
        )
        inside = points.filter(pl.col("lat").is_between(lat0, lat1) & pl.col("lon").is_between(lon0, lon1))
        ax = fig.add_subplot(grid[1 + i // cols, i % cols])
        _gps_panel(ax, inside, clusters.filter(pl.col("cluster") == row["cluster"]), legend=False)
        n_train = int((inside["split"] != "test").sum())
        ax.set_title(f"cluster {row['cluster']}: {len(members)} test, {n_train} train", fontsize=8)
    return png_uri(fig)


def training_curves_figure(curves: dict[str, dict[str, pl.DataFrame]], chosen: list[str]) -> str:
    """Validation MCC of every member on one axis, then each member's training loss terms.

    `curves`: member -> {metric name: frame(step, value)} (see `analysis.read_curves`).
    """
    members = list(curves)
    cols = min(4, max(1, len(members)))
    rows = 1 + math.ceil(len(members) / cols)
    fig = Figure(figsize=(3.2 * cols, 2.6 * rows), layout="constrained")
    grid = fig.add_gridspec(rows, cols)
    ax = fig.add_subplot(grid[0, :])
    for member in members:
        mcc = curves[member].get("val/mcc")
        if mcc is not None:
            style = "-" if member in chosen else "--"
            ax.plot(
                mcc["step"], mcc["value"], style, label=member + (" (chosen)" if member in chosen else "")
            )
    ax.set(xlabel="epoch", ylabel="validation MCC", title="validation MCC per member")
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    for i, member in enumerate(members):
        sub = fig.add_subplot(grid[1 + i // cols, i % cols])
        terms = {
            name.removeprefix("train/"): frame
            for name, frame in curves[member].items()
            if name.startswith("train/") and not name.removeprefix("train/").startswith(GATE_STATS_PREFIX)
        }
        for term, frame in terms.items():
            sub.plot(frame["step"], frame["value"], label=term)
        sub.set_title(member, fontsize=9)
        sub.tick_params(labelsize=7)
        if terms:
            sub.legend(fontsize=6)
        else:
            sub.text(0.5, 0.5, "no train/* logs", ha="center", va="center", transform=sub.transAxes)
    return png_uri(fig)
