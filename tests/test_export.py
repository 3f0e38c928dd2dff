"""`roadwork export`: one folder that answers like the project, loaded anywhere the package is installed.

Built over `tiny_served` (tests/test_serve_fast.py: a random tiny backbone and heads in a temporary
project layout); each loader runs in a fresh Python process started outside the project, so that nothing
but the folder and the installed package can answer. The same on a trained pipeline is tested end to end
in tests/test_pipeline.py.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from PIL import Image

from roadwork import cli
from roadwork.config import STAGE_KEYS, Paths, load_params, write_params
from roadwork.serve.card import CardError, model_card, validate_card
from roadwork.serve.export import export_model
from roadwork.serve.predictor import Predictor, Served
from tests.test_serve_fast import jpeg, tiny_served

pytestmark = pytest.mark.timeout(600)

ROOT = Path(__file__).resolve().parents[1]
TIME = "2026-05-01T12:00:00+00:00"
CARD = {
    "model_name": "rw-tiny",
    "description": "a tiny random model",
    "version": "1.2.3",
    "submitted_by": "5FtinyHotkey",
    "submission_time": TIME,
}
FORBIDDEN = ("roadwork.train.loop", "roadwork.train.losses", "roadwork.train.crossfit", "dvc", "dvclive")
# Each loader of the folder, in a process that has only the folder and the installed package.
ANSWER = r"""
import io, json, sys
from PIL import Image
from roadwork.serve.detector import RoadworkDetector
from roadwork.serve.predictor import Predictor, Served
from transformers import pipeline

folder, files = sys.argv[1], sys.argv[2:]
detector = RoadworkDetector.from_pretrained(folder, device="cpu")
predictor = Predictor(Served.from_export(folder), device="cpu")
classify = pipeline("image-classification", model=folder, trust_remote_code=True, device="cpu")
out = {"detector": [], "predictor": [], "pipeline": [], "pipeline_path": [], "labels": []}
for name in files:
    data = open(name, "rb").read()
    out["detector"].append(detector(Image.open(io.BytesIO(data))))
    out["predictor"].append(predictor.predict([(name, data)])[0]["probability"])
    scores = classify(Image.open(io.BytesIO(data)), top_k=None)
    out["labels"].append(sorted(s["label"] for s in scores))
    out["pipeline"].append(next(s["score"] for s in scores if s["label"] == "Roadwork"))
    by_path = classify(name, top_k=None)  # a path: opened, not decoded, as the image is
    out["pipeline_path"].append(next(s["score"] for s in by_path if s["label"] == "Roadwork"))
loaded = [m for m in FORBIDDEN if m in sys.modules]
assert not loaded, f"serving the folder imported {loaded}"
print(json.dumps(out))
"""


def answer_in_fresh_process(folder: Path, files: list[Path], cwd: Path) -> dict[str, list[Any]]:
    """Every loader's answers to `files` from a new interpreter in `cwd` (outside the project)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env |= {"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(cwd / "hf-modules")}  # no stale remote code
    script = f"FORBIDDEN = {FORBIDDEN!r}\n{ANSWER}"
    done = subprocess.run(
        [sys.executable, "-c", script, str(folder), *map(str, files)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def query_files(project: Path, tmp_path: Path) -> list[Path]:
    """Queries for an end-to-end project (tests/test_pipeline.py): a 224 px crop challenge, a letterboxed
    one, a test image of the dataset at its own size (a phone photo when there is one) and the same image
    enlarged to 1600x1200 (decoded at 1/8 scale)."""
    answers = pl.read_parquet(project / "validation/answers.parquet")
    files = [
        project / "data/challenge" / answers.filter(pl.col("protocol") == p)["file"][0]
        for p in ("crop", "letterbox")
    ]
    shard = next((project / "data/raw/synthetic/data").glob("test-*.parquet"))
    images = [b["bytes"] for b in pl.read_parquet(shard)["image"] if b["bytes"] and decodes(b["bytes"])]
    small_side = load_params(project / "params.yaml")["views"]["small_side"]
    photo = next((d for d in images if max(Image.open(io.BytesIO(d)).size) > small_side), images[0])
    (tmp_path / "photo.jpg").write_bytes(photo)
    Image.open(io.BytesIO(photo)).convert("RGB").resize((1600, 1200)).save(
        tmp_path / "photo_1600.jpg", quality=75
    )
    return [*files, tmp_path / "photo.jpg", tmp_path / "photo_1600.jpg"]


def decodes(data: bytes) -> bool:
    """Whether the bytes decode (the dataset's broken rows do not)."""
    try:
        Image.open(io.BytesIO(data)).load()
    except OSError:
        return False
    return True


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


EXPORTED = [
    "README.md",
    "backbone/config.json",
    "backbone/model.safetensors",
    "config.json",
    "ensemble.json",
    "heads/head/head.json",
    "heads/head/model.safetensors",
    "heads/mlp/head.json",
    "heads/mlp/model.safetensors",
    "model_card.json",
    "modeling_roadwork.py",
    "preprocessor_config.json",
]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Served]:
    root = tmp_path_factory.mktemp("project")
    return root, tiny_served(root)


@pytest.fixture(scope="module")
def queries(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A validator's 224 px crop, a letterboxed 224 px query and a full-size photo."""
    root = tmp_path_factory.mktemp("queries")
    images = {"crop.jpg": jpeg(224, 224, seed=1), "letterbox.jpg": jpeg(224, 224, seed=2, letterbox=True)}
    images["photo.jpg"] = jpeg(2016, 1512, seed=3)
    for name, data in images.items():
        (root / name).write_bytes(data)
    return [root / name for name in images]


def test_the_folder_holds_what_answers_and_answers_like_the_project(
    project: tuple[Path, Served], queries: list[Path], tmp_path: Path
) -> None:
    served = project[1]
    out = tmp_path / "export"
    written = export_model(served, out, card=CARD)
    assert files_under(out) == EXPORTED and sorted(written) == sorted(out / f for f in EXPORTED)
    assert json.loads((out / "model_card.json").read_text()) == CARD
    heads = json.loads((out / "heads/mlp/head.json").read_text())
    assert heads["folds"] == 2 and "heldout" not in heads  # the training rows stay in the project
    expected = [
        r["probability"]
        for r in Predictor(served, device="cpu").predict([(str(f), f.read_bytes()) for f in queries])
    ]
    answers = answer_in_fresh_process(out, queries, cwd=tmp_path)
    for loader in ("detector", "predictor", "pipeline", "pipeline_path"):
        np.testing.assert_allclose(answers[loader], expected, atol=1e-6, err_msg=loader)
    assert answers["labels"] == [["None", "Roadwork"]] * len(queries)
    # another layout of the settings is refused, not misread
    config = json.loads((out / "config.json").read_text())
    config["serving"]["format"] = 2
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "ensemble.json").write_text((out / "ensemble.json").read_text())
    with pytest.raises(ValueError, match="serving format 2"):
        Served.from_export(tmp_path)
    # the same folder again: the same bytes (the card's time is given)
    again = tmp_path / "again"
    export_model(served, again, card=CARD)
    assert all((out / f).read_bytes() == (again / f).read_bytes() for f in EXPORTED)


def test_a_public_backbone_is_recorded_by_hub_id_and_revision(
    project: tuple[Path, Served], queries: list[Path], tmp_path: Path
) -> None:
    root, served = project
    out = tmp_path / "export"
    # A local folder stands in for the hub id (from_pretrained reads either; the tests cannot reach the hub).
    export_model(served, out, card=CARD, backbone="hub", hub_id=str(root / "backbone"), revision="0123abcd")
    assert files_under(out) == [f for f in EXPORTED if not f.startswith("backbone/")]
    source = json.loads((out / "config.json").read_text())["serving"]["backbone"]
    assert source["hub_id"] == str(root / "backbone") and source["revision"] == "0123abcd"
    expected = Predictor(served, device="cpu").predict([("photo", queries[-1].read_bytes())])[0][
        "probability"
    ]
    assert answer_in_fresh_process(out, queries[-1:], cwd=tmp_path)["detector"][0] == pytest.approx(
        expected, abs=1e-6
    )
    with pytest.raises(ValueError, match="revision"):
        export_model(served, tmp_path / "unpinned", card=CARD, backbone="hub", hub_id="facebook/dinov3")
    with pytest.raises(ValueError, match="not a folder to copy"):
        export_model(Served.from_export(out), tmp_path / "copied", card=CARD, backbone="copy")
    with pytest.raises(ValueError, match="backbone='disk'"):
        export_model(served, tmp_path / "disk", card=CARD, backbone="disk")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model_name": None}, "field 'model_name' is missing"),
        ({"submitted_by": None}, "field 'submitted_by' is missing"),
        ({"version": "1.0"}, "field 'version' is '1.0': expected X.Y.Z"),
        ({"version": 1}, "field 'version' must be a non-empty string"),
        ({"description": "  "}, "field 'description' must be a non-empty string"),
        ({"submission_time": "yesterday"}, "field 'submission_time' is 'yesterday'"),
        ({"submission_time": "2026-05-01T12:00:00"}, "with a UTC offset"),
        ({"model_name": "rw tiny"}, "field 'model_name' must not hold white space"),
        ({"license": "mit"}, r"unknown field\(s\) \['license'\]"),
    ],
)
def test_a_missing_or_malformed_card_field_is_refused_naming_it(
    project: tuple[Path, Served], tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    card = {k: v for k, v in (CARD | change).items() if v is not None}
    with pytest.raises(CardError, match=message):
        validate_card(card)
    with pytest.raises(CardError, match=message):
        export_model(project[1], tmp_path / "export", card=card)
    assert not (tmp_path / "export").exists()  # checked before anything is written


def test_model_card_stamps_the_time_now_in_utc() -> None:
    card = model_card(name="rw", hotkey="5F", version="0.1.0", description="d")
    assert card["submission_time"].endswith("+00:00") and validate_card(card) == card


def test_a_folder_holding_other_files_is_not_overwritten(
    project: tuple[Path, Served], tmp_path: Path
) -> None:
    out = tmp_path / "export"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"notes\.txt"):
        export_model(project[1], out, card=CARD)
    assert (out / "notes.txt").read_text() == "mine"
    (out / "notes.txt").unlink()
    export_model(project[1], out, card=CARD)
    export_model(project[1], out, card=CARD | {"version": "1.2.4"})  # an export is replaced
    assert json.loads((out / "model_card.json").read_text())["version"] == "1.2.4"


def configured_project(root: Path, served: Served, export: dict[str, Any] | None = None) -> Path:
    """A params.yaml + config.yaml whose paths point at `tiny_served`'s files under `root`."""
    params = load_params(ROOT / "params.yaml")
    params["paths"] |= {
        "backbone": str(served.backbone),
        "heads": str(served.heads),
        "submission": str(Path(served.heads).parent / "submission"),
        "validation": str(root / "validation"),
        "metrics": str(root / "metrics"),
        "raw": "data/raw/synthetic",
    }
    params["extract"] |= {"side": served.extract.side}
    params.pop("export", None)  # the section the test gives, or none
    if export is not None:
        params["export"] = export
    root.mkdir(parents=True, exist_ok=True)
    write_params(root, params)
    return root / "params.yaml"


def test_the_command_exports_with_the_options_over_the_configured_section(
    project: tuple[Path, Served], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    served = project[1]
    config = configured_project(tmp_path, served, {"name": "rw-configured", "hotkey": "5Fconfigured"})
    out = tmp_path / "export"
    args = ["--params", str(config), "export", str(out), "--version", "2.0.0", "--time", TIME]
    assert cli.main(args) == 0
    card = json.loads((out / "model_card.json").read_text())
    assert (card["model_name"], card["submitted_by"], card["version"]) == (
        "rw-configured",
        "5Fconfigured",
        "2.0.0",
    )
    assert card["description"].startswith("roadwork: frozen DINOv3 features of 12 views per image")
    readme = (out / "README.md").read_text()
    assert "pipeline_tag: image-classification" in readme and "Not measured" in readme
    assert "Trained on synthetic images" in readme and TIME not in readme
    capsys.readouterr()
    bare = configured_project(tmp_path / "bare", served)
    assert cli.main(["--params", str(bare), "export", str(tmp_path / "x"), "--hotkey", "5F"]) == 2
    assert "export.name: missing required key" in capsys.readouterr().err
    assert (
        cli.main(
            [
                "--params",
                str(bare),
                "export",
                str(tmp_path / "x"),
                "--name",
                "a",
                "--hotkey",
                "5F",
                "--version",
                "2",
            ]
        )
        == 2
    )
    assert "field 'version' is '2': expected X.Y.Z" in capsys.readouterr().err


def test_the_stage_exports_into_its_path(
    project: tuple[Path, Served], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if "export" not in {f.name for f in dataclasses.fields(Paths)} or "export" not in STAGE_KEYS:
        pytest.skip("paths.export and the export stage's keys are not in roadwork.config yet")
    from stages import export as stage

    served = project[1]
    configured_project(
        tmp_path, served, {"name": "rw-stage", "hotkey": "5Fstage", "version": "1.0.0", "backbone": "copy"}
    )
    params = load_params(tmp_path / "params.yaml")
    params["paths"]["export"] = str(tmp_path / "exported")
    write_params(tmp_path, params)
    monkeypatch.chdir(tmp_path)
    stage.main()
    assert files_under(tmp_path / "exported") == EXPORTED
    assert json.loads((tmp_path / "exported/model_card.json").read_text())["model_name"] == "rw-stage"


@pytest.mark.bench
def test_the_detector_bench_runs_on_an_exported_folder(project: tuple[Path, Served], tmp_path: Path) -> None:
    export_model(project[1], tmp_path / "export", card=CARD)
    out = tmp_path / "bench.json"
    args = ["--export", str(tmp_path / "export"), "--calls", "1", "--reencode", "1", "--json", str(out)]
    done = subprocess.run(
        [sys.executable, "-m", "bench.detector", *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert [row["size"] for row in result["rows"]] == [[224, 224], [1920, 1080], [4032, 3024]]
    assert [row["decode_scale"] for row in result["rows"]][1:] == [0.125, 0.125]  # 32 px views: 1/8
    assert all(0 < row["p50_ms"] <= row["p99_ms"] and 0 <= row["probability"] <= 1 for row in result["rows"])
    assert result["refusal"]["p50_ms"] > 0 and "| 4032x3024 photo |" in done.stdout
