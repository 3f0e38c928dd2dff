"""The benchmarks must not rot: they run at a tiny size on the CPU, and their arithmetic is checked."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import DINOv3ViTConfig, DINOv3ViTModel

from bench.backbone import forward_flops, vith16plus
from roadwork.config import load_params, section
from roadwork.features.backbone import BackboneConfig, build_tiny, pooled_tokens

pytestmark = [pytest.mark.bench, pytest.mark.timeout(1200)]  # scripts run on a tiny size: slow

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("gated", [False, True])
def test_analytic_flops_match_torch_flop_counter(gated: bool) -> None:
    config = DINOv3ViTConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=96,
        num_register_tokens=4,
        use_gated_mlp=gated,
        attn_implementation="eager",  # attention as matmuls, so the counter sees them
    )
    model = DINOv3ViTModel(config).eval()
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        pooled_tokens(model, torch.randn(3, 3, 48, 48))
    assert counter.get_total_flops() == 3 * forward_flops(config, 48)


def test_full_architecture_is_the_840m_vith16plus() -> None:
    with torch.device("meta"):
        model = DINOv3ViTModel(vith16plus())
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 1) == 840.6
    assert forward_flops(model.config, 512) / 1e12 == pytest.approx(1.90, abs=0.01)  # DESIGN's figure


def test_backbone_bench_runs_tiny_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    args = ["--side", "32", "--batches", "1", "2", "--iters", "1", "--matmul", "64", "--json", str(out)]
    subprocess.run([sys.executable, "-m", "bench.backbone", *args], cwd=ROOT, check=True, capture_output=True)
    result = json.loads(out.read_text())
    assert result["model"] == "tiny" and [row["batch"] for row in result["eager"]] == [1, 2]
    assert all(row["views_per_s"] > 0 and row["tflops"] > 0 for row in result["eager"])
    tiny = build_tiny(section(BackboneConfig, load_params(ROOT / "params.yaml"), "backbone").tiny)
    assert result["gflop_per_view"] * 1e9 == pytest.approx(forward_flops(tiny.config, 32))


def test_masks_bench_runs_tiny_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    args = ["--images", "2", "--repeats", "1", "--json", str(out)]
    subprocess.run([sys.executable, "-m", "bench.masks", *args], cwd=ROOT, check=True, capture_output=True)
    result = json.loads(out.read_text())
    assert set(result["tiny"]) == {"encode", "decode/1", "decode/3", "decode/6"}
    assert result["stage"]["images"] == 2 and result["stage"]["images_per_s"] > 0


def test_cache_scale_bench_tracks_one_file_per_array_and_shard(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    args = ["--images", "40", "--train", "30", "--dim", "8", "--tta-augs", "2", "--chunk-rows", "4"]
    args += ["--shard-rows", "8", "--repeats", "1", "--json", str(out)]
    subprocess.run(
        [sys.executable, "-m", "bench.cache_scale", *args], cwd=ROOT, check=True, capture_output=True
    )
    caches = json.loads(out.read_text())["caches"]
    # Per array: its shards plus its zarr.json; per group one zarr.json. 40 rows in shards of 8 = 5 shards;
    # TTA holds the 10 test rows (2 shards) per augmentation.
    assert caches["files"] == {
        "backbone.zarr": 6 * (5 + 1) + 1,  # cls, patch_mean, patch_max, copies, image_id, done
        "masks.zarr": 5 * (5 + 1) + 1,  # image_mask, view_masks, coverage, image_id, done
        "tta.zarr": 2 * (3 * (2 + 1) + 1) + 1,  # per augmentation: tokens, image_id, done
    }
    assert len(caches["noop_repro_s"]) == 1 and caches["noop_repro_s"][0] > 0


def test_jpeg_bench_runs_on_cpu(tmp_path: Path) -> None:
    folder, out = tmp_path / "jpegs", tmp_path / "jpeg.json"
    bench = [sys.executable, "-m", "bench.jpeg_gpu"]
    subprocess.run([*bench, "make", str(folder), "--images", "1"], cwd=ROOT, check=True, capture_output=True)
    run = [*bench, "run", str(folder), "--repeats", "1", "--json", str(out)]
    subprocess.run(run, cwd=ROOT, check=True, capture_output=True)
    rows = json.loads(out.read_text())["rows"]
    assert [row["image"] for row in rows] == ["1920x1080", "4032x3024"]
    assert all(row["pil_ms"] > 0 and row["tv_cpu_ms"] > 0 for row in rows)


def test_campaign_full_settings_are_a_valid_configuration(tmp_path: Path) -> None:
    from bench.campaign import NATIX, TTA_16, campaign_params, parse_args
    from roadwork.config import stage_shares
    from roadwork.features.backbone import BackboneConfig
    from roadwork.features.cache import ExtractConfig
    from roadwork.masks.config import MasksConfig
    from roadwork.synth.dataset import SynthConfig
    from roadwork.train.config import member_config
    from roadwork.tta import TtaConfig

    args = parse_args(["--full", "--fraction", "0.1", "--workers", "12"])
    models = {"backbone": str(tmp_path / "vith16plus"), "masks": str(tmp_path / "sam3")}
    params = campaign_params(args, models, 0.1)
    stage_shares(params)  # every stage's keys are there
    synth = section(SynthConfig, params, "synth")
    assert dict(synth.rows) == {"train": 625, "test": 230} and synth.scale == 1.0
    assert synth.rows["train"] == round(0.1 * NATIX["train"])
    extract = section(ExtractConfig, params, "extract")
    assert (extract.side, extract.compile, extract.device, extract.workers) == (512, True, "cuda", 12)
    assert section(BackboneConfig, params, "backbone").model == models["backbone"]
    masks = section(MasksConfig, params, "masks")
    assert (masks.model, masks.dtype, masks.workers) == (models["masks"], "bfloat16", 12)
    assert len(section(TtaConfig, params, "tta").augmentations) == len(TTA_16) == 16
    members = {
        name: member_config(params["train"], override, name)
        for name, override in params["ensemble"]["members"].items()
    }
    assert members["baseline"].width == 512 and members["wider"].width == 768
    assert members["more_heads"].heads == 16 and all(m.amp == "bf16" for m in members.values())


def test_campaign_runs_the_stages_in_dependency_order() -> None:
    from bench.campaign import pipeline

    params = load_params(ROOT / "params.yaml")
    names = [name for name, _ in pipeline(ROOT, params, "submit")]
    members = [f"train@{m}" for m in params["ensemble"]["members"]]
    assert names[0] == "config" and names[-1] == "submit" and "report" not in names
    for before, after in [
        ("synth", "ingest"),
        ("ingest", "extract"),
        ("backbone", "extract"),
        ("views", "extract"),
        ("sam", "masks"),
        *((stage, member) for member in members for stage in ("extract", "masks", "text", "gps")),
        *((member, "finetune") for member in members),
        ("finetune", "tta"),
        ("tta", "submit"),
    ]:
        assert names.index(before) < names.index(after), (before, after)


def test_campaign_projection_arithmetic() -> None:
    from bench.campaign import NATIX, StageRun, project

    params = load_params(ROOT / "params.yaml")
    counts = {"train": 50, "test": 20}
    runs = [
        StageRun("synth", wall_s=5.0, rss_peak_mib=1, tree_rss_peak_mib=1, sampled_work_s=4.0),
        StageRun("backbone", wall_s=9.0, rss_peak_mib=1, tree_rss_peak_mib=1, sampled_work_s=1.0),
        StageRun("masks", wall_s=10.0, rss_peak_mib=1, tree_rss_peak_mib=1, sampled_work_s=4.0),
        StageRun("train@mlp", wall_s=8.0, rss_peak_mib=1, tree_rss_peak_mib=1, sampled_work_s=2.0),
        StageRun("tta", wall_s=6.0, rss_peak_mib=1, tree_rss_peak_mib=1, sampled_work_s=3.0),
    ]
    project(runs, params, counts)
    synth, backbone, masks, train, tta = runs
    assert synth.projected_s is None and backbone.projected_s == 9.0
    assert masks.projected_s == pytest.approx(6.0 + 4.0 * sum(NATIX.values()) / 70)
    assert train.projected_s == pytest.approx(6.0 + 2.0 * NATIX["train"] / 50)
    augs = len(params["tta"]["augmentations"])
    assert (tta.units, tta.natix_units) == (augs * 20 * 12, augs * NATIX["test"] * 12)
    assert tta.projected_s == pytest.approx(3.0 + 3.0 * NATIX["test"] / 20)


def test_campaign_fit_through_two_fractions() -> None:
    from bench.campaign import StageRun, fit

    def run(stage: str, wall: float, units: float, projection: str = "sampled") -> StageRun:
        out = StageRun(stage, wall_s=wall, rss_peak_mib=1, tree_rss_peak_mib=1, units=units)
        out.projection, out.natix_units, out.projected_s = projection, 1000.0, wall
        return out

    small = [run("extract", 10.0, 10), run("train@mlp", 8.0, 10), run("tta", 5.0, 10), run("sam", 9, 0)]
    large = [run("extract", 14.0, 20), run("train@mlp", 8.0, 20), run("tta", 20.0, 20)]
    large.append(run("sam", 9.5, 0, "constant"))
    fit(small, large)
    extract, train, tta, sam = large
    assert (extract.projection, extract.fixed_s) == ("fit", pytest.approx(6.0))
    assert extract.projected_s == pytest.approx(6.0 + 0.4 * 1000)
    assert train.projected_s == pytest.approx(8.0)  # no growth between the sizes: all of it fixed
    assert (tta.fixed_s, tta.projected_s) == (0.0, pytest.approx(1.0 * 1000))  # steeper: proportional
    assert sam.projection == "constant" and sam.projected_s == 9.5


def test_campaign_two_fractions_fix_the_work_per_unit() -> None:
    from bench.campaign import campaign_params, parse_args

    params = campaign_params(
        parse_args(["--fraction", "0.01", "0.02"]), {"backbone": "tiny", "masks": "tiny"}, 0.02
    )
    assert params["train"]["patience"] == params["train"]["epochs"]  # every run trains every epoch
    heads = params["finetune"]["members"]
    assert heads == params["tta"]["members"] and 0 < len(heads) <= params["ensemble"]["top_k"]
    assert all(
        params["ensemble"]["members"][h].get("model", params["train"]["model"]) != "mlp" for h in heads
    )


@pytest.mark.e2e
def test_campaign_runs_tiny_on_cpu(tmp_path: Path) -> None:
    """The whole campaign on 50 + 18 images at 1/20 of the real frame sizes, one member, on the CPU."""
    out = tmp_path / "campaign.json"
    args = ["--fraction", "0.008", "--scale", "0.05", "--side", "32", "--members", "baseline"]
    args += ["--epochs", "2", "--set", "masks.tiny.image_size=56", "masks.tiny.layers=1", "finetune.folds=2"]
    args += ["finetune.epochs=1", "submit.bootstrap=20", "tta.augmentations=[{}, {flip: true}]"]
    args += ["--device", "cpu", "--workdir", str(tmp_path / "work"), "--out", str(out)]
    done = subprocess.run(
        [sys.executable, "-m", "bench.campaign", *args], cwd=ROOT, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    stages = {run["stage"]: run for run in result["stages"]}
    expected = ["config", "synth", "ingest", "backbone", "gps", "views", "text", "extract", "sam", "masks"]
    expected += ["train@baseline", "finetune", "tta", "submit"]
    assert set(expected) <= set(stages) and list(stages)[-1] == "submit"
    gpu = shutil.which("nvidia-smi") is not None
    for name, run in stages.items():
        assert run["wall_s"] > 0 and run["rss_peak_mib"] > 0, name
        assert gpu or run["gpu_util_mean"] is None, name  # n/a without a GPU
        assert f"| {name} | " in done.stdout  # one table row per stage
        if name != "synth":  # NATIX is larger than the run: no stage projects below its measured time
            assert run["projected_s"] >= run["wall_s"] > 0, name
    counts, extract = result["indexed"], load_params(ROOT / "params.yaml")["extract"]
    copies = 1 + extract["aug_copies"] + extract.get("challenge_copies", 0)  # of a training image
    assert stages["extract"]["units"] == 12 * (copies * counts["train"] + counts["test"])
    assert stages["extract"]["natix_units"] == 12 * (copies * 6251 + 2298)
    assert result["totals"]["projected_s"] > result["totals"]["measured_without_synth_s"]
    assert "Projection to NATIX" in done.stdout and "**total**" in done.stdout


def test_the_ceiling_counts_the_roadwork_a_challenge_keeps():
    import polars as pl

    from experiments.ceiling import left_pixels, roadwork_map

    square = [[[100, 100], [140, 100], [140, 140], [100, 140]]]  # 40 x 40 px, well inside the centre
    objects = [
        {"kind": "cone", "polygons": square},
        {"kind": "orange_car", "polygons": [[[0, 0], [50, 0], [50, 50]]]},
    ]
    drawn = roadwork_map(objects, 480, 270)
    assert (
        int(drawn.sum()) == pytest.approx(40 * 40, rel=0.1) and drawn[:30, :30].sum() == 0
    )  # look-alikes are not roadwork
    index = pl.DataFrame(
        {"image_id": ["a", "b"], "shard": ["s", "s"], "row": [0, 1], "width": [480] * 2, "height": [270] * 2}
    )
    table = pl.DataFrame(
        {
            "file": ["test/crop/real/a.jpg", "test/crop/real/b.jpg", "test/letterbox/real/a.jpg"],
            "image_id": ["a", "b", "a"],
            "protocol": ["crop", "crop", "letterbox"],
            "level": [0, 0, 0],
        }
    )
    left = left_pixels(table, index, {("s", 0): objects}, seed=0)  # "b" has no drawn objects
    scale = 224 / 270  # crop level 0: the centre square of the short side, resized to 224
    assert left[0] == pytest.approx(40 * 40 * scale**2, rel=0.15) and left[1] == 0
    assert left[2] == pytest.approx(40 * 40 * (224 / 480) ** 2, rel=0.2)  # letterbox: the whole frame


def test_ablation_challenge_tokens_are_keyed_by_backbone_views_and_side():
    import dataclasses

    from experiments.ablate import tokens_key
    from roadwork.config import subset
    from roadwork.features.cache import CacheKey
    from roadwork.views.plan import ViewsConfig

    params = load_params()
    views, key = section(ViewsConfig, params, "views"), subset(CacheKey, params, "extract")
    base = tokens_key("a" * 64, views, key)
    assert base == tokens_key("a" * 64, views, key)
    assert base != tokens_key("b" * 64, views, key)  # another backbone
    assert base != tokens_key("a" * 64, views, dataclasses.replace(key, side=key.side + 16))
    assert base != tokens_key("a" * 64, dataclasses.replace(views, grid=views.grid + 1), key)


def test_head_variants_are_valid_member_configs():
    from experiments.head_variants import VARIANTS
    from roadwork.train.config import member_config

    train = load_params()["train"]
    members = {name: {k: v for k, v in o.items() if k != "average"} for name, (_, o) in VARIANTS.items()}
    configs = {name: member_config(train, overrides, name) for name, overrides in members.items()}
    assert configs["mlp"].model == "mlp" and configs["full"].model == "head"
    assert configs["ce"].focal_gamma == 0.0 and configs["ce"].label_smoothing == 0.0
    # focal only: no mask decoder (no Dice term), no consistency, and the weather term is off by default
    only = configs["focal-only"]
    assert not only.masks and only.loss_weights["consistency"] == only.loss_weights["weather"] == 0.0


def test_seed_mean_answers_the_mean_of_its_models_log_odds():
    import torch

    from experiments.head_variants import VARIANTS, SeedMean

    class Fixed(torch.nn.Module):
        def __init__(self, logits: list[list[float]]):
            super().__init__()
            self.out = torch.tensor(logits)

        def forward(self, batch: dict) -> dict:
            return {"logits": self.out}

    mean = SeedMean([Fixed([[0.0, 1.0], [2.0, -2.0]]), Fixed([[1.0, 3.0], [0.0, 0.0]])])
    torch.testing.assert_close(mean({})["logits"], torch.tensor([[0.5, 2.0], [1.0, -1.0]]))
    assert VARIANTS["full-mean-5"][1]["average"] == 5 and VARIANTS["mlp-mean-5"][1]["model"] == "mlp"
