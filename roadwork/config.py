"""Typed configuration: `params.yaml` sections parsed into frozen dataclasses.

Each module owns the dataclass of its own section (a comment per field). This module only knows how
to read `params.yaml`, turn a section into its dataclass strictly (unknown or missing keys are errors,
so a typo in `dvc exp run -S` fails loudly instead of being ignored), and save the resolved config
beside an output.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

PARAMS_FILE = "params.yaml"


class ConfigError(ValueError):
    """A params section that does not match its dataclass."""


def load_params(path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    """Read the whole params file once."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found (run from the project root)")
    with path.open() as f:
        params = yaml.safe_load(f) or {}
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return params


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


def load_paths(params: dict[str, Any]) -> Paths:
    """The `paths` section."""
    return section(Paths, params, "paths")


def save_json(data: Any, path: str | Path) -> None:
    """Write a metrics / manifest JSON file (parents created, keys sorted, trailing newline)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
