import dataclasses
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from roadwork.config import (
    EXPERIMENT_KEYS,
    ConfigError,
    from_dict,
    load_params,
    load_paths,
    section,
    stage_params,
    stage_shares,
    to_dict,
    write_params,
)
from roadwork.ensemble import EnsembleConfig, SubmitConfig
from roadwork.train.config import TrainConfig, member_config

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Inner:
    a: int  # an int
    b: tuple[float, ...] = (1.0,)


@dataclass(frozen=True)
class Outer:
    name: str
    inner: Inner
    ratio: float


def test_from_dict_nested_and_coerced():
    cfg = from_dict(Outer, {"name": "x", "inner": {"a": 3, "b": [1, 2]}, "ratio": 1})
    assert cfg == Outer("x", Inner(3, (1.0, 2.0)), 1.0)
    assert isinstance(cfg.ratio, float)
    assert to_dict(cfg) == {"name": "x", "inner": {"a": 3, "b": [1.0, 2.0]}, "ratio": 1.0}


def test_unknown_key_is_an_error_naming_it():
    with pytest.raises(ConfigError, match=r"outer.inner: unknown key\(s\) \['c'\]"):
        from_dict(Outer, {"name": "x", "inner": {"a": 1, "c": 2}, "ratio": 1.0}, "outer")


def test_exponent_without_dot_is_a_float():
    # YAML 1.1 (PyYAML) reads 1e-6 as the string "1e-6"; a float field accepts it, a word it refuses.
    assert from_dict(Outer, {"name": "x", "inner": {"a": 1}, "ratio": "1e-6"}).ratio == 1e-6
    with pytest.raises(ConfigError, match=r"ratio: expected a number, got 'fast'"):
        from_dict(Outer, {"name": "x", "inner": {"a": 1}, "ratio": "fast"})


def test_missing_and_wrong_type():
    with pytest.raises(ConfigError, match=r"ratio: missing required key"):
        from_dict(Outer, {"name": "x", "inner": {"a": 1}})
    with pytest.raises(ConfigError, match=r"inner.a: expected int"):
        from_dict(Outer, {"name": "x", "inner": {"a": "1"}, "ratio": 1.0})
    with pytest.raises(ConfigError, match=r"inner.a: expected int"):
        from_dict(Outer, {"name": "x", "inner": {"a": True}, "ratio": 1.0})


def test_project_params_parse():
    params = load_params("params.yaml")
    paths = load_paths(params)
    assert paths.features.endswith(".zarr")
    ensemble = section(EnsembleConfig, params, "ensemble")
    for member in ensemble.members:
        assert isinstance(member_config(params["train"], ensemble.overrides(member), member), TrainConfig)
    with pytest.raises(ConfigError, match=r"no member 'nope'"):
        ensemble.overrides("nope")
    submit = section(SubmitConfig, params, "submit")
    with pytest.raises(ConfigError, match=r"submit.use='ensemble\+x'"):
        dataclasses.replace(submit, use="ensemble+x")


def test_member_overrides_are_strict():
    params = load_params("params.yaml")
    with pytest.raises(ConfigError, match=r"ensemble.members.m: unknown key\(s\) \['layerz'\]"):
        member_config(params["train"], {"lr": 1e-3, "layerz": 4}, "m")
    assert member_config(params["train"], {"lr": 1e-3}, "m").lr == 1e-3
    assert member_config(params["train"], None, "m").lr == params["train"]["lr"]


def test_bad_token_choice():
    params = load_params("params.yaml")
    with pytest.raises(ConfigError, match=r"train.tokens"):
        section(TrainConfig, {"train": {**params["train"], "tokens": "max"}}, "train")


def test_params_and_config_files_split_the_configuration_without_overlap(tmp_path):
    knobs = yaml.safe_load(Path("params.yaml").read_text())
    flat = {f"{s}.{k}" for s, keys in knobs.items() for k in keys}
    assert flat == set(EXPERIMENT_KEYS)  # params.yaml: the knobs `dvc exp show` displays, no more
    params = load_params("params.yaml")
    write_params(tmp_path, params)
    assert load_params(tmp_path / "params.yaml") == params
    (tmp_path / "config.yaml").write_text(
        (tmp_path / "config.yaml").read_text().replace("train:\n", "train:\n  seed: 1\n", 1)
    )
    with pytest.raises(ConfigError, match=r"train.seed: set in both params.yaml and config.yaml"):
        load_params(tmp_path / "params.yaml")


def test_a_stage_share_holds_only_the_keys_it_reads():
    params = load_params("params.yaml")
    share = stage_params(params, "report")
    assert sorted(share) == ["extract", "paths", "report", "submit"]
    assert sorted(share["extract"]) == ["mean", "seed", "side", "std"] and list(share["submit"]) == [
        "threshold"
    ]
    train = stage_params(params, "train", "mlp")
    assert list(train["ensemble"]["members"]) == ["mlp"]  # one member's overrides, not the others'
    shares = stage_shares(params)
    assert {f"train-{m}" for m in params["ensemble"]["members"]} <= set(shares)
    with pytest.raises(ConfigError, match=r"ensemble.members.nope: missing"):
        stage_params(params, "train", "nope")


def test_a_recipe_overlay_merges_into_config_yaml_keeping_its_comments(tmp_path):
    import shutil

    from roadwork.config import apply_overlay

    for name in ("params.yaml", "config.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    before = (tmp_path / "config.yaml").read_text()
    recipe = ROOT / "configs" / "natix-gpu.yaml"
    changed = apply_overlay(recipe, tmp_path / "config.yaml", write=False)
    assert "extract.side" in changed and "ensemble.members.wider" in changed
    assert (tmp_path / "config.yaml").read_text() == before  # a dry run writes nothing
    apply_overlay(recipe, tmp_path / "config.yaml")
    merged = load_params(tmp_path / "params.yaml")
    assert merged["extract"]["side"] == 512 and merged["backbone"]["dtype"] == "bfloat16"
    assert {"mlp", "linear", "wider", "gps_strong"} <= set(merged["ensemble"]["members"])  # added, none lost
    assert merged["extract"]["mean"] == load_params(ROOT / "params.yaml")["extract"]["mean"]  # untouched
    text = (tmp_path / "config.yaml").read_text()
    assert "# view side in pixels" in text and text.count("\n") >= before.count("\n")  # comments kept
    assert apply_overlay(recipe, tmp_path / "config.yaml") == []  # applying it again changes nothing
    (tmp_path / "typo.yaml").write_text("extract:\n  sidee: 512\n")
    with pytest.raises(ConfigError, match=r"extract\.sidee: not a key of config\.yaml"):
        apply_overlay(tmp_path / "typo.yaml", tmp_path / "config.yaml")
