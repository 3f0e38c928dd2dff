"""Typed configuration: `params.yaml` + `config.yaml` sections parsed into frozen dataclasses.

`params.yaml` holds the knobs experiments vary (the columns of `dvc exp show`), `config.yaml` all the
rest; `load_params` reads them as one mapping. Each stage reads only its share (`stage_params`), which
the `config` stage also writes to the file dvc.yaml makes that stage depend on. Each module owns the
dataclass of its own section (a comment per field). This module turns a section into its dataclass
strictly (unknown or missing keys are errors, so a typo in `dvc exp run -S` fails loudly instead of
being ignored) and saves the resolved config beside an output.
"""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

PARAMS_FILE = "params.yaml"  # the knobs experiments vary: DVC params, the columns of `dvc exp show`
CONFIG_FILE = "config.yaml"  # everything else, beside params.yaml


class ConfigError(ValueError):
    """A params section that does not match its dataclass."""


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: not found (run from the project root)")
    with path.open() as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def merge_disjoint(a: dict[str, Any], b: dict[str, Any], where: str = "") -> dict[str, Any]:
    """The union of two nested mappings; a key set in both (other than two mappings to merge) is an error."""
    out = dict(a)
    for key, value in b.items():
        at = f"{where}.{key}" if where else str(key)
        if key not in out:
            out[key] = value
        elif isinstance(out[key], dict) and isinstance(value, dict):
            out[key] = merge_disjoint(out[key], value, at)
        else:
            raise ConfigError(f"{at}: set in both {PARAMS_FILE} and {CONFIG_FILE}; keep it in one of them")
    return out


def load_params(path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    """The whole configuration: `params.yaml` and the `config.yaml` beside it, read once as one mapping."""
    path = Path(path)
    return merge_disjoint(_read_yaml(path.parent / CONFIG_FILE), _read_yaml(path))


# The keys that live in params.yaml: what experiments vary, shown by `dvc exp show` (`write_params`).
EXPERIMENT_KEYS = ("train.seed", "train.metadata", "train.meta_dropout", "submit.target")


def write_params(directory: str | Path, params: dict[str, Any]) -> None:
    """Write a whole configuration as `params.yaml` (the EXPERIMENT_KEYS) + `config.yaml` (the rest)."""
    knobs: dict[str, Any] = {}
    rest = json.loads(json.dumps(params))  # a deep copy
    for key in EXPERIMENT_KEYS:
        knobs = _merge_share(knobs, _key_share(params, key))
        *parents, leaf = key.split(".")
        node = rest
        for part in parents:
            node = node[part]
        del node[leaf]
    directory = Path(directory)
    (directory / PARAMS_FILE).write_text(yaml.safe_dump(knobs, sort_keys=False))
    (directory / CONFIG_FILE).write_text(yaml.safe_dump(rest, sort_keys=False))


# The keys each stage reads (a section, or one key of it). The `config` stage writes each stage's share
# to `<paths.params>/<stage>.json`, a dependency of that stage in dvc.yaml, so a change reruns exactly
# the stages that read the key; the stages read their share through `stage_params`, never more.
# `paths` is part of every share. `ensemble.members.{member}` is the one member a `train@` stage trains.
_CACHE_KEYS = ("extract.side", "extract.mean", "extract.std", "extract.seed")  # `CacheKey`
STAGE_KEYS: dict[str, tuple[str, ...]] = {
    "synth": ("synth",),
    "ingest": ("ingest",),
    "generate": ("generate", "synth", "ingest"),
    "backbone": ("backbone",),
    "gps": ("gps",),
    "views": ("views",),
    "text": ("text",),
    "extract": ("extract", "backbone.dtype"),
    "sam": ("masks.model", "masks.tiny"),
    "masks": ("masks",),
    "train": (
        "train",
        "ensemble.members.{member}",
        *_CACHE_KEYS,
        *(f"masks.{k}" for k in ("source", "model", "prompts", "score_threshold", "mask_threshold")),
        "masks.image_grid",
        "masks.view_grid",
        "gps.near_km",
        "gps.brackets_km",
    ),
    "finetune": ("finetune", "ensemble", "submit.threshold", "submit.bootstrap", *_CACHE_KEYS),
    "tta": (
        "tta",
        "views",
        "backbone.dtype",
        "ensemble",
        "submit.threshold",
        "submit.bootstrap",
        "extract",
    ),
    "challenge": ("challenge", "ingest", "train.val_fraction", "train.split_seed", "validate.protocols"),
    "challenge_tokens": ("views", "backbone.dtype", *_CACHE_KEYS),
    "submit": ("ensemble", "submit", "views.small_side"),
    "validate": ("extract", "views", "backbone", "submit.threshold", "submit.bootstrap"),
    "report": ("report", "submit.threshold", *_CACHE_KEYS),
    "export": ("export", "views", "extract", "backbone.dtype"),
}


def _key_share(params: dict[str, Any], dotted: str) -> dict[str, Any]:
    """`{a: {b: value}}` for the key "a.b" of `params`; an error naming the key when it is missing."""
    *parents, leaf = dotted.split(".")
    node = params
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            raise ConfigError(f"{dotted}: missing from {PARAMS_FILE} / {CONFIG_FILE}")
    if not isinstance(node, dict) or leaf not in node:
        raise ConfigError(f"{dotted}: missing from {PARAMS_FILE} / {CONFIG_FILE}")
    value: Any = node[leaf]
    for part in reversed([*parents, leaf]):
        value = {part: value}
    return value


def stage_params(params: dict[str, Any], stage: str, member: str | None = None) -> dict[str, Any]:
    """The keys stage `stage` reads (`STAGE_KEYS`, plus `paths`); `member` for a `train@` stage."""
    if stage not in STAGE_KEYS:
        raise ConfigError(f"stage {stage!r}: not one of {sorted(STAGE_KEYS)}")
    keys = ("paths", *(k.format(member=member) for k in STAGE_KEYS[stage]))
    share: dict[str, Any] = {}
    for key in keys:
        share = _merge_share(share, _key_share(params, key))
    return share


def _merge_share(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Union of two picks of the same mapping (overlapping picks agree, so `b` may win)."""
    out = dict(a)
    for key, value in b.items():
        both = isinstance(out.get(key), dict) and isinstance(value, dict)
        out[key] = _merge_share(out[key], value) if both else value
    return out


def load_stage_params(stage: str, member: str | None = None) -> dict[str, Any]:
    """A stage's share of the configuration (what its script may read)."""
    return stage_params(load_params(), stage, member)


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build dataclass `cls` from `data`, recursing into nested dataclasses; strict about keys."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where or cls.__name__}: unknown key(s) {unknown}; known: {sorted(fields)}")
    kwargs = {}
    for name, field in fields.items():
        key = f"{where}.{name}" if where else name
        if name not in data:
            no_default = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
            if no_default:
                raise ConfigError(f"{key}: missing required key")
            continue
        kwargs[name] = _coerce(hints[name], data[name], key)
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, key: str) -> Any:
    """Convert one YAML value to the annotated type (nested dataclasses, tuples, floats from ints)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, key)  # type: ignore[arg-type]
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, key) if len(inner) == 1 else value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        item = args[0] if args else Any
        return tuple(_coerce(item, v, key) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {k: _coerce(args[1], v, f"{key}.{k}") for k, v in value.items()}
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads `1e-6` (no dot) as a string
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if hint in (int, str, bool) and not isinstance(value, hint):
        raise ConfigError(f"{key}: expected {hint.__name__}, got {value!r}")
    if hint is int and isinstance(value, bool):
        raise ConfigError(f"{key}: expected int, got {value!r}")
    return value


def section(cls: type[T], params: dict[str, Any], name: str) -> T:
    """Parse `params[name]` into `cls`."""
    if name not in params:
        raise ConfigError(f"{PARAMS_FILE}: missing section {name!r}")
    return from_dict(cls, params[name], name)


def subset(cls: type[T], params: dict[str, Any], name: str) -> T:
    """Dataclass `cls` from those keys of section `name` that are its fields (a stage's share of a section
    may hold only those: `CacheKey` of `extract:`, say); strict about the fields themselves."""
    if name not in params:
        raise ConfigError(f"{PARAMS_FILE}: missing section {name!r}")
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return from_dict(cls, {k: v for k, v in params[name].items() if k in fields}, name)


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (nested) config dataclass."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=list))


def save_resolved(config: Any, path: str | Path) -> None:
    """Write the resolved config beside an output, so every artefact says how it was made."""
    save_json(to_dict(config), path)


@dataclasses.dataclass(frozen=True)
class Paths:
    """Every path the pipeline reads or writes; dvc.yaml interpolates these same keys."""

    synthetic: str  # where `synth` writes its NATIX-schema dataset (a dataset root, shards under data/)
    raw: str  # dataset root that `ingest` reads: the synthetic one, or a copy of natix-network-org/roadwork
    prepared: str  # index.parquet (one row per unique image) + quarantine.parquet
    gps: str  # k-means clusters of the test GPS + per-image sampling weights
    views: str  # the view plan: 12 boxes per image
    backbone: str  # the materialised backbone (save_pretrained dir + fingerprint.json)
    text: str  # MiniLM scene-description embeddings (zarr)
    features: str  # backbone view features (zarr)
    sam: str  # the materialised SAM 3 (save_pretrained dir of model + processor, fingerprint.json)
    masks: str  # SAM 3 pseudo-masks per image and view (zarr)
    heads: str  # trained heads, one folder per ensemble member
    predictions: str  # validation / test predictions, one folder per member
    dora: str  # DoRA fold adapters: <member>/fold<k>/ + folds.parquet
    dora_predictions: str  # <member>/oof.parquet (adaptation split, out of fold), val|test.parquet
    tta: str  # TTA backbone features, one row cache per augmentation (aug-<hash>/)
    tta_predictions: str  # plain|dora/<member>/<part>.parquet (+ <part>_weights.parquet)
    live: str  # dvclive logs, one folder per member
    submission: str  # submission.csv
    metrics: str  # stage metrics (json, tracked by git)
    reports: str  # the self-contained error-analysis page (index.html)
    params: str  # each stage's share of the configuration (`config` stage; <stage>.json)
    generated: str  # the generated half of the challenges: a NATIX-schema dataset or <part>/<label>/ images
    synthetic_generated: (
        str  # where `synth` writes the synthetic world's second style (a NATIX-schema dataset)
    )
    challenge: str  # validator-style challenges: <part>/<protocol>/<domain>/*.jpg, challenges.parquet
    challenge_tokens: str  # the validation challenges' pooled backbone tokens (val.npy)
    generated_train: str  # `generate`: the generated domain as training data (NATIX schema + provenance)
    export: str  # the served model as one self-contained folder (`roadwork export`)
    validation: str  # the served model on the test challenges: details.json, answers.parquet, levels.json


def load_paths(params: dict[str, Any]) -> Paths:
    """The `paths` section."""
    return section(Paths, params, "paths")


def fresh_dir(path: str | Path, *, owned: tuple[str, ...] | None = None) -> Path:
    """An output folder started afresh: removed with everything in it, then created empty. With `owned`
    (the names a stage writes there), a folder holding anything else is refused, not deleted: a path
    pointed at the wrong place must not cost a user their files."""
    path = Path(path)
    if owned is not None and path.exists():
        foreign = sorted(p.name for p in path.iterdir()) if path.is_dir() else [path.name]
        foreign = [name for name in foreign if name not in owned]
        if foreign:
            raise FileExistsError(f"{path}: holds {foreign}, not this stage's output; refusing to delete it")
    if path.is_dir():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def save_json(data: Any, path: str | Path) -> None:
    """Write a metrics / manifest JSON file (parents created, keys sorted, trailing newline)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def stage_shares(params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every stage's share by the name of its file: `<stage>` and, per ensemble member, `train-<member>`."""
    shares = {stage: stage_params(params, stage) for stage in STAGE_KEYS if stage != "train"}
    for member in params.get("ensemble", {}).get("members", {}):
        shares[f"train-{member}"] = stage_params(params, "train", member)
    return shares


OPEN_MAPPINGS = ("ensemble.members",)  # where an overlay may add keys (a member's name is free)


def _merge_overlay(node: Any, overlay: dict[str, Any], where: str, changed: list[str]) -> None:
    """Merge `overlay` into the round-trip mapping `node` in place: mappings recurse, anything else
    replaces; a key the configuration does not have is an error, but under OPEN_MAPPINGS."""
    for key, value in overlay.items():
        at = f"{where}.{key}" if where else str(key)
        if key not in node and not where.startswith(OPEN_MAPPINGS):
            raise ConfigError(
                f"{at}: not a key of {CONFIG_FILE} (a typo?); the overlay sets only existing keys"
            )
        if isinstance(value, dict) and isinstance(node.get(key), dict):
            _merge_overlay(node[key], value, at, changed)
        elif node.get(key) != value:
            node[key] = value
            changed.append(at)


def apply_overlay(
    overlay_path: str | Path, config_path: str | Path = CONFIG_FILE, *, write: bool = True
) -> list[str]:
    """Merge a recipe overlay (a partial config.yaml: configs/*.yaml) into `config_path`, keeping its
    comments and order; returns the keys that changed. With `write` False, changes nothing."""
    from ruamel.yaml import YAML  # round-trip YAML (comments kept); DVC's own dependency

    yaml_rt = YAML()
    yaml_rt.width = 110
    config_path = Path(config_path)
    document = yaml_rt.load(config_path.read_text())
    overlay = _read_yaml(Path(overlay_path))
    changed: list[str] = []
    _merge_overlay(document, overlay, "", changed)
    buffer = io.StringIO()
    yaml_rt.dump(document, buffer)
    merged = merge_disjoint(yaml.safe_load(buffer.getvalue()), _read_yaml(config_path.parent / PARAMS_FILE))
    stage_shares(merged)  # every stage still finds its keys, before anything is written
    if write and changed:
        config_path.write_text(buffer.getvalue())
    return changed
