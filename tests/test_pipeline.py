"""End to end: `dvc repro` of the real dvc.yaml on a tiny params file, in a fresh repository.

Also checks DVC's bookkeeping: a second repro runs nothing, and a `train.*` change (through
`dvc exp run -S`) re-runs only the heads and the stages that read them, with `dvc metrics diff`
showing the change.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml
import zarr
from PIL import Image

from roadwork.config import load_params, write_params
from roadwork.data.images import ShardReader
from roadwork.train.checkpoint import load_head
from roadwork.tta.augment import AugSpec

pytestmark = pytest.mark.timeout(1800)  # the module's fixture runs `dvc repro` end to end

ROOT = Path(__file__).resolve().parents[1]
# The metric and param columns of `dvc exp show`, before the dependencies' hashes.
EXP_SHOW_COLUMNS = (
    *("mcc", "accuracy", "roc_auc", "reward", "img_mcc", "img_auc"),
    *("v_mcc", "v_worst", "v_real", "v_gen", "v_reward"),
    *("train.seed", "train.metadata", "train.meta_dropout", "submit.target", "extract.side"),
)
GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@t",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@t",
}


def tiny_params() -> dict:
    """The project's configuration shrunk to seconds: few small images, a small view side, few epochs."""
    params = load_params(ROOT / "params.yaml")
    params["synth"].update(rows={"train": 48, "test": 16}, shards={"train": 2, "test": 1}, scale=0.1)
    params["extract"].update(side=32, batch_images=16, chunk_rows=8, shard_rows=16, workers=0)
    params["masks"].update(batch_images=16, chunk_rows=8, shard_rows=16, workers=0)
    params["tta"].update(chunk_rows=4, shard_rows=8)
    params["masks"]["tiny"].update(image_size=56, layers=1)
    params["train"].update(epochs=3, patience=3)
    params["ingest"].update(workers=1)
    params["submit"].update(bootstrap=100)
    params["export"].update(time="2026-12-06T00:00:00+00:00")  # a fixed card: the forced rerun's bytes match
    # Two members: the MLP baseline, cross-fitted, and a one-block full head (both take their seed from
    # train.seed).
    params["ensemble"].update(
        top_k=2, members={"mlp": {"model": "mlp", "crossfit": True}, "head": {"model": "head", "layers": 1}}
    )
    return params


def run(cwd: Path, *args: str) -> str:
    return run_with(cwd, {}, *args)


def run_with(cwd: Path, extra_env: dict[str, str], *args: str) -> str:
    env = {**os.environ, **GIT_ENV, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    done = subprocess.run(args, cwd=cwd, env=env | extra_env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A fresh git + DVC repository holding the project's code, dvc.yaml and a tiny configuration."""
    root = tmp_path_factory.mktemp("project")
    for name in ("roadwork", "stages", "assets"):
        shutil.copytree(ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", root / "dvc.yaml")
    (root / "docs").mkdir()
    shutil.copy(ROOT / "docs/ablations.md", root / "docs/ablations.md")  # the report renders it
    shutil.copy(ROOT / ".gitignore", root / ".gitignore")
    write_params(root, tiny_params())
    run(root, "git", "init", "-q")
    run(root, "dvc", "init", "-q")
    run(root, "dvc", "config", "core.analytics", "false")
    run(root, "git", "add", "-A")
    run(root, "git", "commit", "-qm", "init")
    return root


@pytest.mark.e2e
def test_repro_end_to_end(project: Path) -> None:
    out = run(project, "dvc", "repro")
    for stage in (
        "synth",
        "ingest",
        "backbone",
        "gps",
        "views",
        "text",
        "extract",
        "train@mlp",
        "submit",
    ):
        assert f"Running stage '{stage}'" in out

    ingest = json.loads((project / "metrics/ingest.json").read_text())
    # Bad rows cycle: truncated JPEG, bad label (quarantined), bad GPS (kept, its GPS set to NULL).
    bad = [i % 3 for i in range(tiny_params()["synth"]["bad_rows"])]
    assert ingest["quarantined"] == 2 * (bad.count(0) + bad.count(1))
    assert ingest["repaired_rows"] == 2 * bad.count(2) and set(ingest["repairs_by_field"]) <= {"gps"}
    assert ingest["duplicates_collapsed"] == tiny_params()["synth"]["duplicates"]
    assert (
        ingest["rows_read"] == ingest["rows_indexed"] + ingest["quarantined"] + ingest["duplicates_collapsed"]
    )

    index = pl.read_parquet(project / "data/prepared/index.parquet")
    submission = pl.read_csv(project / "submission/submission.csv")
    assert submission.columns == ["image_id", "probability", "label"]
    assert sorted(submission["image_id"]) == sorted(index.filter(pl.col("split") == "test")["image_id"])
    assert submission["probability"].is_between(0, 1).all()
    assert ((submission["probability"] > 0.5).cast(pl.Int64) == submission["label"]).all()

    scores = json.loads((project / "submission/scores.json").read_text())
    assert sorted(scores["chosen"]) == ["head", "mlp"]
    assert -1 <= scores["test"]["mcc"] <= 1 and scores["test"]["n"] == len(submission)
    lo, hi = scores["test"]["mcc_lo"], scores["test"]["mcc_hi"]
    assert lo <= scores["test"]["mcc"] <= hi
    # The DVC metric is the headline: the served variant's four numbers; each member's validation MCC is
    # a DVC plot beside it.
    final = json.loads((project / "metrics/final.json").read_text())
    assert sorted(final) == ["accuracy", "img_auc", "img_mcc", "mcc", "reward", "roc_auc"]
    # The served model is the target's choice (the validator's, calibrated on its challenges), not the NATIX
    # choice that scores["test"] holds.
    assert final["mcc"] == round(scores["served"]["test"]["mcc"], 4)
    assert final["roc_auc"] == round(scores["served"]["test"]["roc_auc"], 4)
    assert final["img_mcc"] == round(scores["image_only"]["test"]["mcc"], 4)
    assert scores["image_only"]["test"]["n"] == len(submission)
    members = json.loads((project / "metrics/members.json").read_text())
    routes = ("natix", "small", "large")  # each member on each choice's validation rows or challenges
    assert sorted(row["member"] for row in members) == sorted(
        f"{m} ({r})" for m in ("head", "mlp") for r in routes
    )
    assert all(-1 <= row["val_mcc"] <= 1 for row in members)
    page = (project / "reports/index.html").read_text()
    assert "<h2>" in page and "http://" not in page and "https://" not in page
    for path in (
        "models/heads/mlp/model.pt",
        "predictions/mlp/val.parquet",
        "live/mlp/metrics.json",
    ):
        assert (project / path).is_file(), path
    # The cross-fitted MLP: one model per fold, every labelled train row held out by exactly one of them.
    assert len(json.loads((project / "live/mlp/metrics.json").read_text())["fold_best_epochs"]) == 5
    heldout = load_head(project / "models/heads/mlp").heldout
    labelled = index.filter((pl.col("split") == "train") & pl.col("label").is_not_null())
    assert sorted(heldout) == sorted(labelled["image_id"]) and set(heldout.values()) == set(range(5))

    # Nothing changed: nothing runs.
    again = run(project, "dvc", "repro")
    assert "Running stage" not in again

    # Every stage is deterministic on one machine: a forced re-run of the whole pipeline writes the same
    # bytes into every output but the answer-latency timing (docs/decisions.md says which outputs differ
    # across machines, and why).
    before = output_hashes(project)
    run(project, "dvc", "repro", "--force")
    assert output_hashes(project) == before


def output_hashes(project: Path) -> dict[str, str]:
    """Every stage output's hash as dvc.lock records it (a directory's hash covers its files)."""
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    outs = [(stage, out) for stage, entry in lock.items() for out in entry.get("outs", [])]
    return {f"{stage}:{out['path']}": out["md5"] for stage, out in outs if "latency" not in out["path"]}


def zarr_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array under a zarr group, by its path in the group."""
    return {name: array[:] for name, array in zarr.open_group(path, mode="r").arrays()} | {
        f"{name}/{sub}": value
        for name, group in zarr.open_group(path, mode="r").groups()
        for sub, value in zarr_arrays(path / name).items()
    }


@pytest.mark.e2e
def test_masks_and_tta_under_torchrun_rebuild_the_caches_of_one_process(project: Path) -> None:
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    for stage, cache in (("masks", "features/masks.zarr"), ("tta", "features/tta.zarr")):
        one = zarr_arrays(project / cache)
        shutil.rmtree(project / cache)
        out = run(project, *torchrun, "-m", f"stages.{stage}")
        assert f"{stage}[1/2]" in out  # the second rank took part
        two = zarr_arrays(project / cache)
        assert sorted(two) == sorted(one) and len(one) >= 4
        for name, value in one.items():
            np.testing.assert_array_equal(two[name], value, err_msg=f"{cache}/{name}")
    # Rank 0 reports the views both ranks computed: every (image, augmentation) row of the cache but
    # the identity's, which are the feature cache's clean views, copied.
    tta = zarr_arrays(project / "features/tta.zarr")
    identity = f"aug-{AugSpec().digest()}"
    rows = sum(len(v) for k, v in tta.items() if k.endswith("/image_id") and not k.startswith(identity))
    assert computed_views(out) == rows * 12 > 0
    assert len(tta[f"{identity}/image_id"]) > 0
    # DVC sees the same caches, the same TTA predictions and the same tta.json: nothing to rerun.
    assert json.loads(run(project, "dvc", "status", "--json")) == {}


def computed_views(log: str) -> int:
    """The views the tta stage ran through the backbone (all ranks), from its log line."""
    return int(re.search(r"^tta(?:\[0/\d+\])?: (\d+) views computed", log, re.MULTILINE).group(1))


@pytest.mark.e2e
def test_train_param_reruns_only_the_heads_and_what_reads_them(project: Path) -> None:
    run(project, "git", "add", "-A")
    run(project, "git", "commit", "-qm", "baseline run")
    out = run(project, "dvc", "exp", "run", "-n", "seed7", "-S", "train.seed=7")
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    # The caches (extract, sam, masks) stay; the heads retrain, and every stage reading a head reruns:
    # DoRA adapts the new heads, TTA re-predicts with them, submit and the report show the new numbers,
    # and validate scores the served heads again.
    assert ran == {
        "config",
        "train@mlp",
        "train@head",
        "finetune",
        "tta",
        "submit",
        "validate",
        "report",
        "export",
    }
    diff = json.loads(run(project, "dvc", "metrics", "diff", "--all", "--json"))
    # the only DVC metrics: a handful of headline numbers each
    assert set(diff) <= {"metrics/final.json", "metrics/validator.json"}
    assert set(diff.get("metrics/validator.json", {})) <= {"v_mcc", "v_worst", "v_real", "v_gen", "v_reward"}
    changed = diff["metrics/final.json"]
    assert sorted(changed) == ["accuracy", "img_auc", "img_mcc", "mcc", "reward", "roc_auc"]
    assert all({"old", "new"} <= set(entry) for entry in changed.values())
    # the heads retrained to other weights (on 18 tiny test rows the headline numbers need not move)
    before = yaml.safe_load(run(project, "git", "show", "HEAD:dvc.lock"))["stages"]
    after = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    for stage in ("train@mlp", "train@head"):
        assert before[stage]["outs"] != after[stage]["outs"], stage
    # `dvc exp show`: these metric and param columns and no others (no interpolated `paths.*`); `make exps`
    # shows all but the ones it drops in a 200-column terminal.
    header = run(project, "dvc", "exp", "show", "--csv").splitlines()[0].split(",")
    shown = header[header.index("parent") + 1 :][: len(EXP_SHOW_COLUMNS)]
    assert sorted(shown) == sorted(EXP_SHOW_COLUMNS)
    makefile = (ROOT / "Makefile").read_text().splitlines()
    drop = next(line for line in makefile if line.startswith("EXPS_DROP")).split(":=", 1)[1]
    drop = drop.strip().replace("$$", "$")
    kept = [column for column in shown if not re.match(drop, column)]
    assert {"mcc", "img_mcc", "v_mcc", "v_worst", "v_real", "v_gen", "train.seed"} <= set(kept)
    table = run_with(project, {"COLUMNS": "200"}, "dvc", "exp", "show", "--no-pager", "--drop", drop)
    assert max(len(line) for line in table.splitlines()) <= 200
    assert all(f" {column} " in table for column in kept) and "…" not in table, table


@pytest.mark.e2e
def test_tta_param_reruns_only_tta_and_what_reads_it_without_backbone_passes(project: Path) -> None:
    out = run(project, "dvc", "exp", "run", "-S", "config.yaml:tta.temperature=2.0")
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    assert ran == {"config", "tta", "submit", "report"}
    summary = json.loads((project / "metrics/tta.json").read_text())
    assert summary["temperature"] == 2.0 and computed_views(out) == 0  # augmentations were cached


def predict(project: Path, *args: str, stdin: str | None = None) -> tuple[int, list[dict]]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    done = subprocess.run(
        [sys.executable, "-m", "roadwork.cli", "predict", *args],
        cwd=project,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return done.returncode, [json.loads(line) for line in done.stdout.splitlines()]


@pytest.mark.e2e
def test_predict_matches_the_pipeline_and_survives_bad_inputs(project: Path, tmp_path: Path) -> None:
    shard = next((project / "data/raw/synthetic/data").glob("test-*.parquet"))
    rc, records = predict(project, str(shard.relative_to(project)))
    quarantined = [r for r in records if "error" in r]
    scored = {r["image_id"]: r["probability"] for r in records if "probability" in r}
    assert rc == (1 if quarantined else 0)
    submission = pl.read_csv(project / "submission/submission.csv")
    same = submission.filter(pl.col("image_id").is_in(list(scored)))
    assert len(same) >= len(scored) - 1  # a cross-split duplicate may be kept in another shard
    for image_id, probability in same.select("image_id", "probability").iter_rows():
        assert scored[image_id] == pytest.approx(probability, abs=1e-5)

    # Files: a JPEG of the dataset, the same image as PNG, greyscale, 224x224, and a corrupt file.
    jpeg = pl.read_parquet(shard)["image"][0]["bytes"]
    image = Image.open(io.BytesIO(jpeg))
    (tmp_path / "a.jpg").write_bytes(jpeg)
    image.save(tmp_path / "b.png")
    image.convert("L").save(tmp_path / "c_grey.jpg")
    image.resize((224, 224)).save(tmp_path / "d_224.jpg", quality=90)
    (tmp_path / "e_corrupt.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    rc, records = predict(project, str(tmp_path), "-", stdin=base64.b64encode(jpeg).decode() + "\n")
    by_id = {r["id"]: r for r in records}
    assert rc == 1
    assert "error" in by_id[str(tmp_path / "e_corrupt.jpg")]
    for name in ("a.jpg", "b.png", "c_grey.jpg", "d_224.jpg"):
        record = by_id[str(tmp_path / name)]
        assert 0.0 <= record["probability"] <= 1.0 and record["label"] == int(record["probability"] > 0.5)
    # The same bytes by file and by base64 give the same answer (up to float rounding: the two arrive
    # in batches of different sizes, and CPU matmuls sum in an order that depends on the batch).
    by_file = by_id[str(tmp_path / "a.jpg")]["probability"]
    assert by_id["stdin:1"]["probability"] == pytest.approx(by_file, abs=1e-6)
    # One line per input, in input order, a failure in its place (directories in sorted order).
    names = ["a.jpg", "b.png", "c_grey.jpg", "d_224.jpg", "e_corrupt.jpg"]
    assert [r["id"] for r in records] == [str(tmp_path / n) for n in names] + ["stdin:1"]
    files = [str(tmp_path / n) for n in ("a.jpg", "e_corrupt.jpg", "b.png")]
    rc, records = predict(project, *files, "--batch", "2")
    assert rc == 1 and [r["id"] for r in records] == files and "error" in records[1]
    # another batch composition: equal up to float summation order
    assert records[0]["probability"] == pytest.approx(by_id[files[0]]["probability"], abs=1e-6)
    # The tiny images are small (views.small_side): they get the small images' route (chosen on the crop
    # and letterbox challenges); the same image at full size the route chosen on native-size challenges.
    assert {by_id[str(tmp_path / n)]["model"] for n in names[:4]} == {"small"}
    image.resize((640, 360)).save(tmp_path / "f_full.png")
    rc, records = predict(project, str(tmp_path / "f_full.png"))
    assert rc == 0 and records[0]["model"] == "large"


@pytest.mark.e2e
def test_the_full_size_route_answers_a_file_as_the_members_answer_its_row_without_metadata(
    project: Path,
) -> None:
    from roadwork.serve.detector import RoadworkDetector
    from roadwork.train.data import null_metadata

    predictor = RoadworkDetector(project, device="cpu").predictor
    route = predictor.routes[-1]  # the route for images of any size
    members = [pl.read_parquet(project / f"predictions/{m}/test_image_only.parquet") for m in route.members]
    reader = ShardReader(project / "data/raw/synthetic")
    index = pl.read_parquet(project / "data/prepared/index.parquet").filter(pl.col("split") == "test")
    for image_id, shard, row in index.select("image_id", "shard", "row").head(3).iter_rows():
        features, _ = predictor.view_features(reader.read(shard, row))
        logit = predictor.logits(features[None], null_metadata(1), route)[0]
        expected = np.mean([f.filter(pl.col("image_id") == image_id)["logit"][0] for f in members])
        assert logit == pytest.approx(expected, abs=1e-4)


@pytest.mark.e2e
def test_validate_scores_what_roadwork_predict_answers(project: Path) -> None:
    answers = pl.read_parquet(project / "validation/answers.parquet")
    assert set(answers["protocol"]) == {"crop", "letterbox", "native"}
    assert set(answers["level"].to_list()) <= {0, 1, 2, 3, None} and set(answers["domain"]) == {
        "real",
        "generated",
    }
    assert (
        answers.filter(pl.col("protocol") == "native")["level"].null_count()
        == (answers["protocol"] == "native").sum()
    )
    for (protocol, domain), frame in answers.group_by("protocol", "domain"):
        assert frame["label"].sum() * 2 == len(frame), (protocol, domain)  # balanced, like a validator's
    files = answers["file"].to_list()
    rc, records = predict(project, *(f"data/challenge/{f}" for f in files))
    assert rc == 0
    np.testing.assert_allclose([r["probability"] for r in records], answers["prob"].to_numpy(), atol=1e-6)
    details = json.loads((project / "validation/details.json").read_text())
    headline = json.loads((project / "metrics/validator.json").read_text())
    mccs = [block["all"]["mcc"] for block in details["protocols"].values()]
    assert headline["v_mcc"] == round(float(np.mean(mccs)), 4) and headline["v_worst"] == round(min(mccs), 4)
    assert sorted(headline) == ["v_gen", "v_mcc", "v_real", "v_reward", "v_worst"]
    assert 0.0 <= headline["v_worst"] <= headline["v_mcc"] <= 1.0
    crop = answers.filter(pl.col("protocol") == "crop")
    assert sorted(details["protocols"]["crop"]["levels"]) == sorted(
        str(v) for v in set(crop["level"].to_list())
    )
    assert list(details["protocols"]["native"]["levels"]) == ["-"]  # no augmentation, no level
    latency = json.loads((project / "metrics/validator_latency.json").read_text())
    assert 0 < latency["p50_ms"] <= latency["p99_ms"] and latency["n"] == len(answers)


@pytest.mark.e2e
def test_the_miner_detector_answers_like_predict_and_refuses_bad_input(project: Path, tmp_path: Path) -> None:
    from roadwork.serve.detector import InvalidImageError, RoadworkDetector
    from tests.test_export import query_files

    # The detector gets the JPEG as a miner has it (`Image.open` of the bytes, not decoded yet), predict
    # the same file: the same pixels, a full-size JPEG decoded at the same reduced scale by both.
    files = query_files(project, tmp_path)
    _, records = predict(project, "--batch", "1", *map(str, files))
    assert [r["model"] for r in records[:2]] + [records[-1]["model"]] == ["small", "small", "large"]
    detector = RoadworkDetector(project, device="cpu")
    for file, record in zip(files, records, strict=True):
        answer = detector(Image.open(io.BytesIO(file.read_bytes())))
        assert answer == pytest.approx(record["probability"], abs=1e-6), file.name
    data = files[0].read_bytes()
    truncated = io.BytesIO(data[: len(data) // 2])  # the header opens, the pixels do not decode
    with pytest.raises(InvalidImageError, match="cannot read the image"):
        detector(Image.open(truncated))
    with pytest.raises(InvalidImageError, match="expected a PIL image"):
        detector(b"not an image")


@pytest.mark.e2e
def test_card_writes_the_fields_a_validator_backend_checks(project: Path) -> None:
    out = run(
        project, sys.executable, "-m", "roadwork.cli", "card", "--name", "rw-miner-1", "--hotkey", "5Fkey"
    )
    assert "model_card.json" in out
    card = json.loads((project / "model_card.json").read_text())
    assert sorted(card) == ["description", "model_name", "submission_time", "submitted_by", "version"]
    assert (
        card["model_name"] == "rw-miner-1" and card["submitted_by"] == "5Fkey" and card["version"] == "1.0.0"
    )
    assert "validator-style challenges of every protocol: MCC" in card["description"]
    bad = subprocess.run(
        [sys.executable, "-m", "roadwork.cli", "card", "--name", "x", "--hotkey", "y", "--version", "1.0"],
        cwd=project,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "field 'version' is '1.0': expected X.Y.Z" in bad.stderr


@pytest.mark.e2e
def test_the_exported_folder_answers_like_predict_in_a_fresh_process(project: Path, tmp_path: Path) -> None:
    from tests.test_export import answer_in_fresh_process, files_under, query_files

    out = tmp_path / "export"
    cli = [sys.executable, "-m", "roadwork.cli", "export"]
    run(
        project,
        *cli,
        str(out),
        "--name",
        "rw-e2e",
        "--hotkey",
        "5Fe2e",
        "--time",
        "2026-05-01T12:00:00+00:00",
    )
    choice = json.loads((project / "submission/ensemble.json").read_text())
    members = set(choice["members"]) | {m for route in choice["routes"] for m in route["members"]}
    heads = [f"heads/{m}/{f}" for m in members for f in ("head.json", "model.safetensors")]
    top = ["README.md", "config.json", "ensemble.json", "model_card.json", "modeling_roadwork.py"]
    expected = [
        *top,
        "preprocessor_config.json",
        "backbone/config.json",
        "backbone/model.safetensors",
        *heads,
    ]
    assert files_under(out) == sorted(expected)  # exactly what answers: no caches, logs or optimiser state
    # Every loader, in a new interpreter outside the project (the folder and the installed package only),
    # answers what `roadwork predict` answers in the project (which also asserts there that serving
    # imported neither the training loop nor DVC).
    files = query_files(project, tmp_path)
    _, records = predict(project, "--batch", "1", *map(str, files))
    answers = answer_in_fresh_process(out, files, cwd=tmp_path)
    for loader in ("detector", "predictor", "pipeline", "pipeline_path"):
        np.testing.assert_allclose(
            answers[loader], [r["probability"] for r in records], atol=1e-6, err_msg=loader
        )
    readme = (out / "README.md").read_text()
    details = json.loads((project / "validation/details.json").read_text())
    for protocol, block in details["protocols"].items():
        for half, scores in block["domains"].items():
            assert f"| {protocol} | {half} | {scores['n']} | {scores['mcc']:.3f} [" in readme
    bad = subprocess.run(
        [*cli, str(tmp_path / "bad"), "--name", "rw e2e", "--hotkey", "5Fe2e"],
        cwd=project,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "field 'model_name' must not hold white space" in bad.stderr
    assert not (tmp_path / "bad").exists()


@pytest.mark.e2e
def test_results_markdown_is_generated_from_the_outputs_byte_for_byte(project: Path, tmp_path: Path) -> None:
    first, again = tmp_path / "results.md", tmp_path / "again.md"
    for out in (first, again):
        run(project, sys.executable, "-m", "roadwork.cli", "summary", "--markdown", str(out))
    assert first.read_bytes() == again.read_bytes()
    text = first.read_text()
    details = json.loads((project / "validation/details.json").read_text())
    for protocol, block in details["protocols"].items():  # every protocol's row, its numbers as scored
        real = block["domains"]["real"]
        assert f"| {protocol} | {real['mcc']:.3f} [{real['mcc_lo']:.3f}, {real['mcc_hi']:.3f}] |" in text
    scores = json.loads((project / "submission/scores.json").read_text())
    assert f"{scores['image_only']['test']['mcc']:.3f}" in text and "do not edit by hand" in text
