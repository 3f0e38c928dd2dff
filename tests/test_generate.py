"""`generate`: prompts, the synthetic stand-in, a tiny SDXL saved and loaded like a real one, and the
stage's run end to end (ingestible output, provenance, determinism, SIGKILL and resume, ranks, growth)."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import polars as pl
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from roadwork.config import ConfigError, section, to_dict
from roadwork.data.ingest import IngestConfig, ingest
from roadwork.distributed import Ranks
from roadwork.generate import run as run_module
from roadwork.generate.config import GenerateConfig
from roadwork.generate.plan import key_hash
from roadwork.generate.prompts import named_objects, names_roadwork, prompt_for, remove_roadwork
from roadwork.generate.run import CONFIG_FILE, DATA_DIR, PLAN_FILE, read_generated, run_generate
from roadwork.generate.sdxl import build_tiny_sdxl, draw, fit_side, load_pipelines, model_fingerprint, redraw
from roadwork.generate.synthetic import SyntheticWorld, read_scene
from roadwork.synth import text as synth_text
from roadwork.synth.dataset import SynthConfig, generate, unit_frames, write_dataset
from roadwork.synth.style import draw_style

# diffusers' Euler scheduler builds a numpy array from a tensor the way numpy 2 deprecates: not ours.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy:DeprecationWarning"
)
ROOT = Path(__file__).resolve().parents[1]
SYNTH = SynthConfig(
    seed=3, rows={"train": 12, "test": 4}, shards={"train": 2, "test": 1}, scale=0.1, phone_share=0.3,
    positive_rate=0.5, video_share=0.5, frames_per_video=(2, 3), objects_per_image=(1, 3),
    object_scale=0.06, distractor_rate=0.5, test_cities=2, gps_null_rate=0.1, bad_rows=3, duplicates=2,
    description_rate=(0.9, 0.5), informative_text=0.5, alteration_rate=(0.5, 0.1), jpeg_quality=90,
)  # fmt: skip
SYNTHETIC = GenerateConfig(
    model="synthetic", i2i_fraction=0.6, t2i_fraction=0.6, seed=5, shard_rows=4, device="cpu", dtype="float32"
)
INGEST = IngestConfig(labelled_splits=("train", "test"), gps_cell_deg=0.01, workers=1)
LABEL_0 = [
    "Orange traffic cones, a striped orange and white barrier on a city street under a clear sky, with a "
    "road worker in a hi-vis vest beside the road.",
    "Traffic cones beside a residential road in the rain.",
    "Construction zone with lane closures and orange barrels on a two-lane road.",
    "Several workers wearing safety vests are standing near an excavator on the left side of the street.",
    "Roadwork ahead: cones and a flagger.",
    "A quiet residential street with trees and a stop sign.",
    "A city street in daylight.",
]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest (and alike in every process) on one thread: two fight over 2 cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> tuple[Path, pl.DataFrame]:
    root = tmp_path_factory.mktemp("raw")
    write_dataset(SYNTH, root)
    return root, ingest(root, INGEST).index


@pytest.fixture(scope="module")
def sdxl_config(tmp_path_factory) -> GenerateConfig:
    model = build_tiny_sdxl(tmp_path_factory.mktemp("models") / "tiny-sdxl")
    return dataclasses.replace(SYNTHETIC, model=str(model), steps=10, t2i_size=64, i2i_max_side=64)


def generated(raw, out: Path, config: GenerateConfig, **kwargs) -> dict:
    root, index = raw
    return run_generate(index=index, raw_root=root, out_root=out, config=config, synth=SYNTH, **kwargs)


def files(out: Path) -> dict[str, bytes]:
    """The dataset's shards and the plan, by name."""
    return {p.name: p.read_bytes() for p in [*sorted((out / DATA_DIR).iterdir()), out / PLAN_FILE]}


@pytest.fixture(scope="module")
def sdxl_run(raw, sdxl_config, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("sdxl")
    return out, generated(raw, out, sdxl_config)


@pytest.fixture(scope="module")
def synthetic_run(raw, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synthetic")
    return out, generated(raw, out, SYNTHETIC)


# Prompts


@pytest.mark.parametrize("description", LABEL_0)
def test_a_no_roadwork_prompt_never_names_roadwork(description):
    for seed in range(20):
        prompt = prompt_for(description, 0, np.random.default_rng(seed))
        assert prompt and not names_roadwork(prompt), prompt
    assert not names_roadwork(prompt_for(None, 0, np.random.default_rng(0)))


def test_roadwork_phrases_are_removed_and_the_sentence_mended():
    assert remove_roadwork(LABEL_0[0]) == "A city street under a clear sky."
    assert remove_roadwork(LABEL_0[1]) == "A residential road in the rain."
    assert remove_roadwork(LABEL_0[3]) == "The left side of the street."
    assert remove_roadwork(LABEL_0[5]) == LABEL_0[5]  # a stop sign is no roadwork sign
    assert prompt_for(LABEL_0[2], 0, np.random.default_rng(0)) == "A two-lane road."


def test_a_roadwork_prompt_keeps_or_gets_roadwork_objects():
    rng = np.random.default_rng(0)
    assert prompt_for(LABEL_0[1], 1, rng) == LABEL_0[1]  # names cones: kept as it is
    added = prompt_for("A city street in daylight.", 1, rng)
    assert added.endswith(" A city street in daylight.")
    assert named_objects(added[:90]) == ["cone", "barrier", "worker"]  # in front: never cut at 77 tokens
    templates = {prompt_for(text, 1, np.random.default_rng(s)) for s in range(10) for text in (None, "  ")}
    assert len(templates) > 3 and all(
        {"cone", "barrier", "worker"} <= set(named_objects(t)) for t in templates
    )


def test_read_scene_reverses_the_synthetic_wordings():
    for table, field in ((synth_text.ENV_TEXT, "environment"), (synth_text.WEATHER_TEXT, "weather")):
        for key, wordings in table.items():
            assert all(getattr(read_scene(w), field) == key for w in wordings), key
    for key, wordings in synth_text.TIME_TEXT.items():
        assert all(read_scene(f"a city street in the rain{w}").daytime == key for w in wordings), key
    for kind, wording in synth_text.OBJECT_TEXT.items():
        assert read_scene(f"{wording} on a highway").objects == (kind,)
    assert read_scene(None) == read_scene("Lovely.") and read_scene(None).environment is None


# Configuration


@pytest.mark.parametrize(
    ("key", "value"),
    [("i2i_fraction", 1.5), ("strength", 0.0), ("steps", 0), ("t2i_size", 100), ("device", "tpu"),
     ("dtype", "int8"), ("shard_rows", 0), ("jpeg_quality", 101), ("model", " "), ("workers", 0)],
)  # fmt: skip
def test_a_bad_value_is_refused_naming_the_key(key, value):
    with pytest.raises(ValueError, match=rf"^generate\.{key}: "):
        dataclasses.replace(SYNTHETIC, **{key: value})


def test_an_unknown_or_missing_key_is_refused_naming_it():
    params = {"generate": {**to_dict(SYNTHETIC), "strenght": 0.5}}
    with pytest.raises(ConfigError, match=r"generate: unknown key\(s\) \['strenght'\]"):
        section(GenerateConfig, params, "generate")
    del params["generate"]["strenght"], params["generate"]["seed"]
    with pytest.raises(ConfigError, match=r"generate.seed: missing required key"):
        section(GenerateConfig, params, "generate")
    assert section(GenerateConfig, {"generate": to_dict(SYNTHETIC)}, "generate") == SYNTHETIC


# The tiny SDXL


def test_tiny_sdxl_loads_like_a_checkpoint_and_draws(sdxl_config):
    model = Path(sdxl_config.model)
    for name in ("tokenizer", "tokenizer_2"):
        assert {"vocab.json", "merges.txt"} <= {p.name for p in (model / name).iterdir()}
    pipes = load_pipelines(sdxl_config.model, "cpu", "float32")
    assert pipes.t2i.unet is pipes.i2i.unet and pipes.t2i.vae is pipes.i2i.vae  # one copy of the weights
    assert pipes.i2i.unet.config.addition_embed_type == "text_time"
    ids = pipes.i2i.tokenizer("orange traffic cones")["input_ids"]
    assert len(ids) == 5  # start, three whole words, end
    photo = fit_side(Image.new("RGB", (192, 108), (90, 120, 150)), 1024)
    timings = {}
    for task, call in (("i2i", lambda s: redraw(pipes, photo, "a road", s, sdxl_config)),
                       ("t2i", lambda s: draw(pipes, "a road", s, sdxl_config))):  # fmt: skip
        call(0)  # warm-up
        start = time.perf_counter()
        a = call(1)
        timings[task] = time.perf_counter() - start
        b, c = call(1), call(2)
        assert a.size == ((64, 32) if task == "i2i" else (64, 64))  # 192x108 fitted to 64: 64x36 -> 64x32
        assert np.array_equal(np.asarray(a), np.asarray(b)) and not np.array_equal(
            np.asarray(a), np.asarray(c)
        )
    print(f"tiny SDXL, {sdxl_config.steps} steps: i2i {timings['i2i']:.3f} s, t2i {timings['t2i']:.3f} s")
    assert max(timings.values()) < 5.0


def test_a_tiny_sdxl_rebuilt_in_place_changes_its_fingerprint(tmp_path):
    fingerprints = [model_fingerprint(str(build_tiny_sdxl(tmp_path / "m", seed=s))) for s in (0, 1, 0)]
    assert fingerprints[0] == fingerprints[2] != fingerprints[1]  # built deterministically from the seed
    assert (
        model_fingerprint("stabilityai/stable-diffusion-xl-base-1.0")
        == "stabilityai/stable-diffusion-xl-base-1.0"
    )


def test_a_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(OSError, match=r"generate.model='.*no-such-sdxl'.*not a local directory"):
        load_pipelines(str(tmp_path / "no-such-sdxl"), "cpu", "float32")


# The run, end to end


@pytest.mark.parametrize("backend", ["sdxl_run", "synthetic_run"])
def test_output_ingests_with_labels_and_provenance_of_train_sources(raw, backend, request):
    out, counts = request.getfixturevalue(backend)
    index = raw[1]
    result = ingest(out, IngestConfig(labelled_splits=("train",), gps_cell_deg=0.01, workers=1))
    assert result.quarantine.height == 0 and result.repairs.height == 0
    table = pl.read_parquet(out / DATA_DIR)
    plan = pl.from_arrow(feather.read_table(out / PLAN_FILE))
    assert table.height == plan.height == counts["planned"] == counts["images"] == result.index.height > 8
    assert counts["i2i"] > 0 and counts["t2i"] > 0 and counts["unmapped"] == 0
    sources = index.select("source_id", "split", src_label="label", desc="scene_description")
    joined = table.join(sources, left_on="generated.source_id", right_on="source_id", how="left")
    assert joined["split"].to_list() == ["train"] * table.height  # never a test image
    assert joined["label"].to_list() == joined["src_label"].cast(pl.Int64).to_list()
    assert table["generated.model"].unique().to_list() == [
        json.loads((out / CONFIG_FILE).read_text())["model"]
    ]
    assert (
        table["id"].to_list() == plan["id"].to_list()
        and table["generated.seed"].to_list() == plan["seed"].to_list()
    )
    t2i = joined.filter(pl.col("generated.task") == "t2i")
    assert t2i["scene_description"].to_list() == plan.filter(pl.col("task") == "t2i")["prompt"].to_list()
    i2i = joined.filter(pl.col("generated.task") == "i2i")
    assert i2i["scene_description"].to_list() == i2i["desc"].to_list()
    for column in (
        "gps",
        "city_name",
        "license",
        "date_captured",
        "video_info.vid_id",
        "scene_level_tags.weather",
    ):
        assert table[column].null_count() == table.height, column
    sizes = result.index.sort("source_id").select("width", "height").rows()
    assert sizes == table.sort("id").select("width", "height").rows()
    if backend == "sdxl_run":
        assert set(sizes) <= {(64, 64), (64, 32), (64, 48)}


@pytest.mark.parametrize("backend", ["sdxl_run", "synthetic_run"])
def test_two_runs_are_byte_identical(raw, backend, sdxl_config, request, tmp_path):
    out, _ = request.getfixturevalue(backend)
    config = sdxl_config if backend == "sdxl_run" else SYNTHETIC
    again = generated(raw, tmp_path, config)
    assert again["shards_written"] == again["shards"] >= 3
    assert files(tmp_path) == files(out)
    rerun = generated(raw, tmp_path, config)  # complete: nothing to draw
    assert rerun["shards_kept"] == rerun["shards"] and rerun["images"] == 0 and files(tmp_path) == files(out)


KILLED_RUN = """
import json, os, signal, sys
from pathlib import Path
import polars as pl, torch
torch.set_num_threads(1)
from roadwork.generate.config import GenerateConfig
from roadwork.generate.run import run_generate
index, raw, out, config = sys.argv[1:]
replace, renamed = os.replace, []
def killing_replace(src, dst):  # SIGKILL (no cleanup) as the second shard is about to be renamed
    renamed.append(dst)
    if str(dst).endswith(".parquet") and sum(str(d).endswith(".parquet") for d in renamed) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    replace(src, dst)
os.replace = killing_replace
run_generate(index=pl.read_parquet(index), raw_root=Path(raw), out_root=Path(out),
             config=GenerateConfig(**json.loads(config)), synth=None)
"""


def test_a_sigkilled_run_resumes_to_the_uninterrupted_result(raw, sdxl_run, sdxl_config, tmp_path):
    root, index = raw
    index.write_parquet(tmp_path / "index.parquet")
    out = tmp_path / "out"
    args = [str(tmp_path / "index.parquet"), str(root), str(out), json.dumps(to_dict(sdxl_config))]
    done = subprocess.run([sys.executable, "-c", KILLED_RUN, *args], cwd=ROOT, capture_output=True)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]
    left = sorted(p.name for p in (out / DATA_DIR).iterdir())
    assert len(left) == 2 and left[0].startswith(".train-00001") and left[1].startswith("train-00000")
    resumed = generated(raw, out, sdxl_config)
    assert resumed["shards_kept"] == 1 and resumed["shards_written"] == resumed["shards"] - 1
    assert files(out) == files(sdxl_run[0])


def test_ranks_split_the_shards_and_build_the_files_of_one_process(raw, sdxl_run, sdxl_config, tmp_path):
    counts = [generated(raw, tmp_path, sdxl_config, ranks=Ranks(rank, 2, rank)) for rank in (0, 1)]
    shards = counts[0]["shards"]
    assert [c["shards_written"] for c in counts] == [(shards + 1) // 2, shards // 2]
    assert files(tmp_path) == files(sdxl_run[0])


def test_worker_processes_draw_the_files_of_one_process(raw, synthetic_run, tmp_path):
    counts = generated(raw, tmp_path, dataclasses.replace(SYNTHETIC, workers=2))
    assert counts["shards_written"] == counts["shards"] > 1
    assert files(tmp_path) == files(synthetic_run[0])


def test_a_grown_plan_keeps_its_unchanged_shards(raw, synthetic_run, tmp_path):
    root, index = raw
    train = index.filter(pl.col("split") == "train").sort("source_id")
    first = train.head(train.height // 2)
    small = run_generate(index=first, raw_root=root, out_root=tmp_path, config=SYNTHETIC, synth=SYNTH)
    complete = small["planned"] // SYNTHETIC.shard_rows
    before = {p.name[:11]: p.stat().st_mtime_ns for p in sorted((tmp_path / DATA_DIR).iterdir())}
    grown = generated(raw, tmp_path, SYNTHETIC)
    assert complete >= 1 and grown["shards_kept"] == complete
    assert grown["shards_written"] == grown["shards"] - complete
    after = {p.name[:11]: p.stat().st_mtime_ns for p in sorted((tmp_path / DATA_DIR).iterdir())}
    assert all(after[name] == before[name] for name in list(before)[:complete])  # renamed, not redrawn
    assert files(tmp_path) == files(synthetic_run[0])


def test_model_none_leaves_an_empty_dataset(raw, synthetic_run, tmp_path):
    out = tmp_path / "out"
    for name, data in files(synthetic_run[0]).items():  # a previous run's output is there
        (out / DATA_DIR).mkdir(parents=True, exist_ok=True)
        (out / (name if name == PLAN_FILE else f"{DATA_DIR}/{name}")).write_bytes(data)
    counts = generated(raw, out, dataclasses.replace(SYNTHETIC, model="none"))
    assert counts["planned"] == counts["shards"] == counts["images"] == 0
    assert list((out / DATA_DIR).iterdir()) == [] and feather.read_table(out / PLAN_FILE).num_rows == 0
    with pytest.raises(ValueError, match=r"generate\.model=synthetic: needs the synth section"):
        run_generate(index=raw[1], raw_root=raw[0], out_root=tmp_path / "x", config=SYNTHETIC, synth=None)


def test_the_synthetic_redraw_is_the_same_scene_in_a_style_of_its_own(raw, synthetic_run):
    out, _ = synthetic_run
    row = pl.read_parquet(out / DATA_DIR).filter(pl.col("generated.task") == "i2i").row(0, named=True)
    source = raw[1].filter(pl.col("source_id") == row["generated.source_id"]).row(0, named=True)
    unit, frame = SyntheticWorld(SYNTH).unit_of(
        source["source_id"], source["label"], (row["width"], row["height"])
    )
    plain = unit_frames(SYNTH, unit)[frame]
    styled = unit_frames(SYNTH, unit, draw_style(np.random.default_rng([row["generated.seed"], 1])))[frame]
    assert [o.box for o in styled.objects] == [o.box for o in plain.objects]  # the same scene
    challenge = next(r for r in generate(SYNTH, styled=True)["train"] if r.row["id"] == source["source_id"])
    assert challenge.row["image"]["bytes"] != row["image"]["bytes"]  # not the challenges' re-drawing
    assert (row["width"], row["height"]) == (source["width"], source["height"])


def test_the_stage_runs_the_library(raw, synthetic_run, tmp_path, monkeypatch, capsys):
    from stages import generate as stage

    out = tmp_path / "generated"
    paths = SimpleNamespace(raw=str(raw[0]), prepared=str(tmp_path / "prepared"), generated_train=str(out))
    (tmp_path / "prepared").mkdir()
    raw[1].write_parquet(tmp_path / "prepared" / "index.parquet")
    ingest = {"labelled_splits": ["train", "test"], "gps_cell_deg": 0.01, "workers": 1}
    params = {"generate": to_dict(SYNTHETIC), "synth": to_dict(SYNTH), "ingest": ingest, "paths": {}}
    monkeypatch.setattr(stage, "load_stage_params", lambda name: params)
    monkeypatch.setattr(stage, "load_paths", lambda _: paths)
    stage.main()
    assert "generate: " in capsys.readouterr().out
    assert files(out) == files(synthetic_run[0])
    rows = read_generated(out)  # the generated rows as the index has them, with their sources
    plan = pl.from_arrow(feather.read_table(out / "plan.arrow"))
    assert len(rows) == len(plan) and rows["source_image_id"].is_in(raw[1]["image_id"].implode()).all()
    assert set(rows["split"]) == {"train"} and rows["group"].null_count() == 0


def test_shards_carry_hub_features_for_every_column_and_their_digest(synthetic_run):
    out, _ = synthetic_run
    path = sorted((out / DATA_DIR).iterdir())[0]
    metadata = pq.read_schema(path).metadata
    features = json.loads(metadata[b"huggingface"])["info"]["features"]
    assert list(features) == pq.read_schema(path).names == run_module.SCHEMA.names
    assert features["generated.task"] == {"dtype": "string", "_type": "Value"}
    assert len(json.loads(metadata[run_module.DIGEST_KEY])["digest"]) == 64
    assert key_hash(5, "i2i/x") == key_hash(5, "i2i/x") != key_hash(6, "i2i/x")
