"""The error-analysis report: tables against hand computations, and the page on a small synthetic setup."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from PIL import Image

import stages.report as report_stage
from roadwork import config as roadwork_config
from roadwork.config import Paths, write_params
from roadwork.data.gps import GpsConfig, build_gps, write_gps
from roadwork.data.index import read_index
from roadwork.data.ingest import IngestConfig, ingest, write_prepared
from roadwork.features.cache import ExtractConfig, FeatureCache, RowCache, StaleCacheError, expected_attrs
from roadwork.features.text import write_text_cache
from roadwork.models import build_model
from roadwork.report import analysis
from roadwork.report.gallery import GateSource, masks_if_present, read_view_masks, thumbnail, view_gates
from roadwork.report.html import SECTIONS, img, with_ci
from roadwork.train.checkpoint import load_head, save_head
from roadwork.train.config import member_config
from roadwork.train.data import Vocab
from roadwork.views.plan import ViewsConfig, build_plan, view_boxes, write_plan
from tests.natix_fixture import jpeg_bytes, make_row, write_shard
from tests.test_cache import write_features

DIM = 8  # per-token feature width of the fake backbone
WEATHER = ["['Sunny']", "['Rainy']", "[]", "['Sunny', 'Foggy']"]
DAYTIME = ["Light", "Dark", None]
# Test rows: (label, logit of member a, logit of member b); the ensemble averages the two logits.
TEST_ROWS = [
    (1, 3.0, 1.0),
    (1, -2.0, -1.0),
    (0, 2.5, 0.5),
    (0, -3.0, -1.0),
    (1, 1.0, 1.0),
    (0, -1.0, 0.0),
    (1, 2.0, 2.0),
    (0, 3.5, 2.5),
    (1, -3.0, -2.0),
    (0, -2.0, -2.0),
    (1, 0.5, 0.7),
    (0, 0.2, -0.8),
]


def _raw_rows(split: str, n: int, offset: int) -> list[dict]:
    rows = []
    for k in range(n):
        i = offset + k
        colour = ((37 * i) % 256, (91 * i) % 256, (53 * i) % 256)
        size = (192, 108) if i % 3 else (160, 120)
        rows.append(
            make_row(
                i,
                image=jpeg_bytes(*size, colour, comment=f"{split} {i}"),
                width=size[0],
                height=size[1],
                gps=None if i % 5 == 4 else f"[{40.0 + 0.3 * (i % 4):.6f}, {-80.0 - 0.3 * (i % 2):.6f}]",
                scene_description="cones <b>&amp;</b> a <script>x</script> sign" if i == offset + 1 else None,
                label=TEST_ROWS[k][0] if split == "test" else i % 2,
                **{"scene_level_tags.weather": WEATHER[i % 4], "scene_level_tags.daytime": DAYTIME[i % 3]},
            )
        )
    return rows


def _member_config(model: str):
    params = roadwork_config.load_params("params.yaml")
    params["train"] = {**params["train"], "width": 16, "heads": 2, "layers": 1, "device": "cpu"}
    return member_config(params["train"], {"model": model}, "m")


def _write_curves(live: Path, member: str, terms: dict[str, list[float]]) -> None:
    for name, values in terms.items():
        path = live / member / "plots" / "metrics" / f"{name}.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        column = name.rsplit("/", 1)[-1]
        path.write_text(f"step\t{column}\n" + "".join(f"{s}\t{v}\n" for s, v in enumerate(values)))


def _final(chosen: list[str]) -> dict:
    scores = {"n": 12, "positives": 6, "threshold": 0.5}
    for k, name in enumerate(("mcc", "accuracy", "f1", "roc_auc", "brier", "reward")):
        scores |= {name: 0.1 * (k + 1), f"{name}_lo": 0.05 * (k + 1), f"{name}_hi": 0.15 * (k + 1)}
    return {
        "members": {"a": 0.7, "b": 0.6},
        "chosen": chosen,
        "use": "ensemble",
        "val": scores,
        "test": scores,
        "variants": {"best_single": scores, "ensemble": scores, "ensemble+tta": None},
        "rows": {"val": 12, "test": 12},
    }


def build_world(root: Path) -> Path:
    """A small pipeline output tree under `root` (index, gps, plan, caches, two members, logs, params)."""
    write_shard(root / "raw" / "data" / "train-00000-of-00001.parquet", _raw_rows("train", 8, 0))
    write_shard(root / "raw" / "data" / "test-00000-of-00001.parquet", _raw_rows("test", 12, 100))
    write_prepared(ingest(root / "raw", IngestConfig(("train", "test"), 0.01, 1)), root / "prepared")
    index = read_index(root / "prepared")
    gps = GpsConfig(
        k=2, seed=0, brackets_km=(50.0, 200.0), weights=(5.0, 2.0, 1.0), null_weight=1.0, near_km=100.0
    )
    write_gps(build_gps(index, gps), root / "gps")
    views = ViewsConfig(grid=3, overlap=0.25)
    plan_meta = write_plan(build_plan(index, views), root / "views", views)

    params = roadwork_config.load_params("params.yaml")
    extract = roadwork_config.section(ExtractConfig, params, "extract")
    ids = index["image_id"].to_list()
    attrs = expected_attrs(extract, backbone={"fingerprint": "fake", "patch_size": 16}, plan_meta=plan_meta)
    (root / "backbone").mkdir()
    (root / "backbone" / "fingerprint.json").write_text(json.dumps({"fingerprint": "fake", "patch_size": 16}))
    cache = FeatureCache.create(
        root / "features.zarr", copies=1, views=12, dim=DIM, chunk_rows=8, shard_rows=8, attrs=attrs
    )
    rows = cache.ensure_rows(ids)
    feats = np.random.default_rng(0).normal(size=(len(ids), 1, 12, 3, DIM)).astype(np.float16)
    write_features(cache, rows, feats, np.ones(len(ids), np.int8))
    write_text_cache(root / "text.zarr", ids, np.zeros((len(ids), 384), np.float32), np.zeros(len(ids), bool))

    vocab = Vocab.fit(index.filter(pl.col("split") == "train"))
    for member, model in (("a", "head"), ("b", "mlp")):
        config = _member_config(model)
        spec = config.model_spec(view_dim=3 * DIM, n_views=12, vocab_sizes=vocab.sizes())
        torch.manual_seed(0)
        save_head(
            root / "heads" / member,
            model=build_model(spec),
            spec=spec,
            vocab=vocab,
            config=config,
            summary={},
        )
    test = index.filter(pl.col("split") == "test").sort("source_id")
    for k, member in enumerate(("a", "b")):
        logit = np.array([r[1 + k] for r in TEST_ROWS])
        frame = test.select("image_id", "label", "group").with_columns(
            split=pl.lit("test"),
            label=pl.col("label").cast(pl.Int64),
            logit=pl.Series(logit),
            prob=pl.Series(1 / (1 + np.exp(-logit))),
        )
        (root / "predictions" / member).mkdir(parents=True)
        frame.write_parquet(root / "predictions" / member / "test.parquet")
    roadwork_config.save_json(_final(["a", "b"]), root / "submission" / "scores.json")
    _write_curves(
        root / "live",
        "a",
        {
            "val/mcc": [0.1, 0.3, 0.4],
            "train/loss": [1.0, 0.8, 0.7],
            "train/focal": [0.5, 0.4, 0.3],
            "train/gates_max": [0.2, 0.3, 0.3],
        },
    )
    _write_curves(root / "live", "b", {"val/mcc": [0.2, 0.25], "train/ce": [0.7, 0.6]})

    # every path named after its key under `root` (new keys need no edit here), the few the world shares
    # or names by kind spelled out
    params["paths"] = {field.name: field.name for field in dataclasses.fields(Paths)} | {
        "synthetic": "raw",
        "synthetic_generated": "generated",
        "text": "text.zarr",
        "features": "features.zarr",
        "masks": "masks.zarr",  # absent: the page says so
        "params": "params.d",
        "dora_predictions": "predictions_dora",
        "tta": "tta.zarr",
        "tta_predictions": "predictions_tta",
    }
    params["report"] = {"gallery": 3, "thumb_width": 128, "bins": 10, "ablations": "docs/ablations.md"}
    write_params(root, params)
    return root


def set_params(root: Path, **changes: dict) -> None:
    params = roadwork_config.load_params(root / "params.yaml")
    for name, values in changes.items():
        params[name] = {**params[name], **values}
    write_params(root, params)


def run_report(root: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the stage in `root`; returns the page."""
    monkeypatch.chdir(root)
    report_stage.main()
    return (root / "reports" / "index.html").read_text()


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return build_world(tmp_path_factory.mktemp("world"))


def _frame(labels, probs, **columns) -> pl.DataFrame:
    return pl.DataFrame({"label": labels, "prob": probs, **columns})


def test_slice_metrics_equal_a_hand_computation():
    frame = _frame(
        [1, 1, 0, 0, 1, 0, 1, 1],
        [0.9, 0.2, 0.7, 0.1, 0.8, 0.3, 0.6, 0.4],
        city=["x", "x", "x", "x", "x", "y", "y", "y"],
    )
    out = {r["value"]: r for r in analysis.slice_metrics(frame, "city", 0.5).iter_rows(named=True)}
    x = out["x"]  # labels 1 1 0 0 1, predictions 1 0 1 0 1: tp 2, fn 1, fp 1, tn 1
    assert (x["n"], x["tp"], x["fn"], x["fp"], x["tn"], x["positives"], x["predicted"]) == (
        5,
        2,
        1,
        1,
        1,
        3,
        3,
    )
    assert x["accuracy"] == pytest.approx(3 / 5)
    assert x["mcc"] == pytest.approx((2 * 1 - 1 * 1) / np.sqrt(3 * 3 * 2 * 2))
    y = out["y"]  # labels 0 1 1, predictions 0 1 0: tp 1, fn 1, tn 1, fp 0
    assert (y["tp"], y["fn"], y["fp"], y["tn"]) == (1, 1, 0, 1)
    assert y["mcc"] == pytest.approx((1 * 1 - 0) / np.sqrt(1 * 2 * 1 * 2))
    assert list(analysis.slice_metrics(frame, "city", 0.5)["value"]) == ["x", "y"]  # largest first
    one_class = analysis.slice_metrics(_frame([1, 1], [0.9, 0.1], g=["z", "z"]), "g", 0.5)
    assert one_class["mcc"][0] is None and one_class["accuracy"][0] == 0.5


def test_confusion_and_reliability_by_hand():
    frame = _frame([1, 0, 1, 0, 0], [0.95, 0.55, 0.5, 0.05, 1.0])
    assert analysis.confusion(frame, 0.5) == {"tp": 1, "fp": 2, "fn": 1, "tn": 1}  # 0.5 is not > 0.5
    bins = analysis.reliability(frame, 10)
    assert bins["n"].to_list() == [1, 0, 0, 0, 0, 2, 0, 0, 0, 2]  # p = 1.0 falls in the last bin
    assert bins["positive_rate"][5] == pytest.approx(0.5) and bins["mean_prob"][5] == pytest.approx(0.525)
    assert bins["positive_rate"][9] == pytest.approx(0.5) and bins["positive_rate"][1] is None


def test_worst_errors_pick_the_most_confident_mistakes():
    frame = _frame([0, 0, 0, 1, 1, 1], [0.9, 0.6, 0.95, 0.1, 0.45, 0.8], image_id=list("abcdef"))
    fp, fn = analysis.worst_errors(frame, 0.5, 2)
    assert fp["image_id"].to_list() == ["c", "a"] and fn["image_id"].to_list() == ["d", "e"]


def test_test_frame_slices_and_its_errors(world):
    index = read_index(world / "prepared")
    weights = pl.read_parquet(world / "gps" / "weights.parquet")
    preds = analysis.ensemble_predictions(world / "predictions", ["a", "b"], "test")
    frame = analysis.scored_frame(preds, index, weights)
    assert len(frame) == 12
    by_source = {r["image_id"]: r for r in frame.iter_rows(named=True)}
    meta = {r["image_id"]: r for r in index.iter_rows(named=True)}
    for image_id, row in by_source.items():
        i = meta[image_id]["source_id"]
        assert row["weather_tag"] == {0: "Sunny", 1: "Rainy", 2: "NULL", 3: "Sunny"}[i % 4]
        assert row["daytime"] == {0: "Light", 1: "Dark", 2: "NULL"}[i % 3]
        assert (row["gps_cluster"] == "no GPS") == (i % 5 == 4)
    # The weather slice by hand from TEST_ROWS (source ids 100..111; ensemble = mean logit).
    sunny = [k for k in range(12) if (100 + k) % 4 in (0, 3)]
    labels = np.array([TEST_ROWS[k][0] for k in sunny])
    pred = np.array([(TEST_ROWS[k][1] + TEST_ROWS[k][2]) / 2 > 0 for k in sunny])
    got = (
        analysis.slice_metrics(frame, "weather_tag", 0.5)
        .filter(pl.col("value") == "Sunny")
        .row(0, named=True)
    )
    assert got["n"] == len(sunny) and got["tp"] == int(np.sum(pred & (labels == 1)))
    assert got["accuracy"] == pytest.approx(np.mean(pred == labels))
    with pytest.raises(ValueError, match="not in the index"):
        analysis.scored_frame(preds.with_columns(image_id=pl.lit("nope")), index, weights)


def test_read_curves_and_markdown_tables(tmp_path):
    _write_curves(tmp_path, "m", {"val/mcc": [0.1, 0.2], "lr": [1e-3, 2e-3]})
    curves = analysis.read_curves(tmp_path / "m")
    assert sorted(curves) == ["lr", "val/mcc"] and curves["val/mcc"]["value"].to_list() == [0.1, 0.2]
    (tmp_path / "m" / "plots" / "metrics" / "bad.tsv").write_text("step\tother\n0\t1\n")
    with pytest.raises(ValueError, match=r"bad.tsv: missing column\(s\) \['bad'\]"):
        analysis.read_curves(tmp_path / "m")
    text = "intro\n| a | b |\n|---|:-:|\n| 1 | 2 |\n\n| c |\n|--|\n| 3 |\n"
    assert analysis.markdown_tables(text) == [[["a", "b"], ["1", "2"]], [["c"], ["3"]]]


def test_view_gates_are_the_heads_pooling_weights(world):
    index = read_index(world / "prepared")
    rows = index.filter(pl.col("split") == "test").head(4)
    params = roadwork_config.load_params(world / "params.yaml")
    attrs = expected_attrs(
        roadwork_config.section(ExtractConfig, params, "extract"),
        backbone={"fingerprint": "fake", "patch_size": 16},
        plan_meta=json.loads((world / "views" / "plan.json").read_text()),
    )
    cache = FeatureCache.open_checked(world / "features.zarr", attrs)
    gates = view_gates(GateSource(load_head(world / "heads" / "a"), cache, world / "text.zarr"), rows, 12)
    kept = round(0.67 * 12)
    assert gates.shape == (4, 12)
    assert (np.isfinite(gates).sum(axis=1) == kept).all()  # pruned views carry no gate
    np.testing.assert_allclose(np.nansum(gates, axis=1), 1.0, rtol=1e-5)  # pooling weights sum to one


def test_thumbnail_draws_views_and_masks():
    data = jpeg_bytes(400, 300, (40, 40, 40))
    boxes = view_boxes(400, 300, ViewsConfig(grid=3, overlap=0.25))
    uri, shares = thumbnail(data, boxes, 200)
    plain = np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB")).astype(
        int
    )
    assert plain.shape == (150, 200, 3) and shares is None
    x = int(boxes[2][0] * 0.5)  # left edge of tile (0, 1): a 1 px yellow line (JPEG blurs its chroma)
    assert plain[75, x, 0] > 150 and plain[75, x, 0] - plain[75, x, 2] > 50
    assert abs(plain[75, x - 6] - 40).max() < 10  # the grey photo beside it
    masks = np.zeros((12, 2, 4, 4), np.float32)
    masks[0, 1, :2, :2] = 1.0  # prompt 1 covers the top-left quarter of the global view
    uri, shares = thumbnail(data, boxes, 200, masks=masks)
    masked = np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB")).astype(
        int
    )
    np.testing.assert_allclose(shares, [0.0, 0.25], atol=0.02)
    assert masked[20, 20, 1] > plain[20, 20, 1] + 60  # prompt 1 is green
    assert abs(masked[120, 170] - plain[120, 170]).max() < 12  # uncovered pixels are unchanged


def test_img_refuses_anything_but_inline_images():
    with pytest.raises(ValueError, match="inline data URIs"):
        img("https://example.org/x.png", "x")


def test_intervals_render_with_their_bounds():
    assert with_ci({"mcc": 0.5, "mcc_lo": 0.25, "mcc_hi": 0.75}, "mcc") == "0.500 [0.250, 0.750]"
    assert with_ci({"roc_auc": None, "roc_auc_lo": None, "roc_auc_hi": None}, "roc_auc") == "—"


def _check_self_contained(page: str) -> None:
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", page, re.I)
    assert "<script" not in page.lower() and "url(" not in page and "@import" not in page
    sources = re.findall(r"<img\b[^>]*\bsrc=\"([^\"]*)\"", page)
    assert sources and all(
        s.startswith(("data:image/png;base64,", "data:image/jpeg;base64,")) for s in sources
    )
    assert len(sources) == page.count("<img")


def test_report_page(world, monkeypatch):
    page = run_report(world, monkeypatch)
    for title in SECTIONS.values():
        assert f"<h2>{title}</h2>" in page
    _check_self_contained(page)
    frame = pl.DataFrame(
        {
            "label": [r[0] for r in TEST_ROWS],
            "prob": [1 / (1 + np.exp(-(r[1] + r[2]) / 2)) for r in TEST_ROWS],
        }
    )
    c = analysis.confusion(frame, 0.5)
    assert c == {"tp": 4, "fp": 2, "fn": 2, "tn": 4}  # TEST_ROWS by hand
    expected = (
        f'<tr><td>true none</td><td class="num">{c["tn"]}</td><td class="num">{c["fp"]}</td></tr>'
        f'<tr><td>true roadwork</td><td class="num">{c["fn"]}</td><td class="num">{c["tp"]}</td></tr>'
    )
    assert expected in page
    assert "docs/ablations.md does not exist yet" in page
    assert "masks.zarr does not exist (the masks stage has not run)" in page
    assert "GAFM pooling weights of member a" in page and "pruned" in page
    assert page.count('class="card"') == 4  # 2 false positives and 2 false negatives exist, gallery k = 3
    assert "&lt;script&gt;x&lt;/script&gt;" in page and "<b>" not in page  # metadata text is escaped
    assert "0.100 [0.050, 0.150]" in page  # final MCC with its interval
    assert run_report(world, monkeypatch) == page  # same inputs, same bytes


def test_report_with_masks_and_ablations(world, tmp_path, monkeypatch):
    index = read_index(world / "prepared")
    ids = index["image_id"].to_list()
    rule = json.loads((world / "views" / "plan.json").read_text())["rule_fingerprint"]
    cache = RowCache.create_or_open(
        tmp_path / "masks.zarr",
        arrays={"view_masks": ((12, 2, 4, 4), "float16")},
        chunk_rows=8,
        shard_rows=8,
        attrs={"prompts": ["traffic cone", "road work sign"], "view_rule_fingerprint": rule},
    )
    masks = np.zeros((len(ids), 12, 2, 4, 4), np.float16)
    masks[:, 0, 0] = 1.0
    cache.write(cache.ensure_rows(ids), {"view_masks": masks})
    docs = tmp_path / "ablations.md"
    docs.write_text("# Ablations\n\n| variant | MCC |\n|---|---|\n| no <pruning> | 0.512 |\n")
    original = roadwork_config.load_params(world / "params.yaml")
    set_params(world, paths={"masks": str(tmp_path / "masks.zarr")}, report={"ablations": str(docs)})
    try:
        page = run_report(world, monkeypatch)
    finally:
        write_params(world, original)
    _check_self_contained(page)
    assert "<td>no &lt;pruning&gt;</td><td>0.512</td>" in page
    assert "traffic cone 100.0%" in page and "road work sign 0.0%" in page
    assert "4 of 4 images cached" in page
    with pytest.raises(StaleCacheError, match="re-run the masks stage"):
        read_view_masks(tmp_path / "masks.zarr", ids, "another view rule")
    assert masks_if_present(str(tmp_path / "absent.zarr"), ids, rule)[0] is None


def test_no_full_head_chosen_is_a_note(world, monkeypatch):
    final = json.loads((world / "submission" / "scores.json").read_text())
    roadwork_config.save_json(_final(["b"]), world / "submission" / "scores.json")
    try:
        page = run_report(world, monkeypatch)
    finally:
        roadwork_config.save_json(final, world / "submission" / "scores.json")
    assert "No chosen member is a full head" in page and "pruned" not in page
