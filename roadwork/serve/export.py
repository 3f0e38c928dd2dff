"""`roadwork export`: the served model as one self-contained folder a miner can publish.

The folder holds exactly what answers a query, and loads anywhere the `roadwork` package is installed
(no params.yaml, no caches, no DVC): `RoadworkDetector.from_pretrained(FOLDER)`,
`Predictor(Served.from_export(FOLDER))`, or transformers' `pipeline("image-classification",
model=FOLDER, trust_remote_code=True)`. Layout:

    config.json               transformers' config; "serving": view rule, extraction settings, backbone
                              dtype, where the backbone is (folder, or hub id + revision)
    preprocessor_config.json  the image processor (views and their side)
    modeling_roadwork.py      the transformers classes (remote code: config, model, processor, pipeline)
    ensemble.json             submit's choice: routes by image size, members, calibrations, threshold
    heads/<member>/           each served member: model.safetensors + head.json (spec, vocabulary, recipe)
    backbone/                 the backbone's saved config.json + safetensors (`backbone="copy"`), or
                              nothing: `backbone="hub"` records a public checkpoint's id and revision
    model_card.json           model_name, description, version, submitted_by, submission_time
    README.md                 the model card: what it answers, what it was trained on, what it scored

No caches, training logs, optimizer states or training rows (a cross-fitted member's fold assignment
stays in the project).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from roadwork.config import fresh_dir, load_paths, to_dict
from roadwork.features.manifest import MANIFEST
from roadwork.serve.card import Evidence, model_card, readme, served_description, validate_card
from roadwork.serve.heads import export_head, load_served_head
from roadwork.serve.predictor import (
    EXPORT_BACKBONE,
    EXPORT_CHOICE,
    EXPORT_CONFIG,
    EXPORT_FORMAT,
    EXPORT_HEADS,
    Served,
)

CARD = "model_card.json"
README = "README.md"
PREPROCESSOR = "preprocessor_config.json"
MODULE = "modeling_roadwork.py"
OWNED = (EXPORT_CONFIG, PREPROCESSOR, MODULE, EXPORT_CHOICE, EXPORT_HEADS, EXPORT_BACKBONE, CARD, README)
BACKBONES = ("copy", "hub")


@dataclass(frozen=True)
class ExportConfig:
    """params `export:` (the `export` stage) and the options of `roadwork export`."""

    name: str  # model_name: unique across miners
    hotkey: str  # submitted_by: the miner's hotkey
    version: str = "1.0.0"  # X.Y.Z
    backbone: str = "copy"  # copy: the backbone's weights go into the folder | hub: a public checkpoint's
    # id and revision only (hub_id, revision)
    hub_id: str | None = None
    revision: str | None = None  # the checkpoint's revision (a commit): the weights the heads were trained on
    description: str | None = None  # default: what is served, with its validator-style score
    time: str | None = None  # submission_time (ISO 8601 with offset); default: when the export is written


def export_model(
    served: Served,
    out_dir: str | Path,
    *,
    card: dict[str, Any],
    backbone: str = "copy",
    hub_id: str | None = None,
    revision: str | None = None,
    evidence: Evidence | None = None,
) -> list[Path]:
    """Write the served model into `out_dir` (made afresh; a folder holding anything but an export is
    refused, not deleted). `card`: the model_card.json fields, checked first (CardError names a missing
    or malformed one). Returns the files written, sorted."""
    card = validate_card(card)
    source = _backbone_source(served, backbone, hub_id, revision)
    members = served.members()
    heads = {name: load_served_head(served.heads / name, "cpu") for name in members}  # all, before writing
    out = fresh_dir(out_dir, owned=OWNED)
    for name, head in heads.items():
        export_head(head, out / EXPORT_HEADS / name)
    if backbone == "copy":
        _copy_backbone(Path(served.backbone), out / EXPORT_BACKBONE)  # type: ignore[arg-type]
    (out / EXPORT_CHOICE).write_text(json.dumps(served.choice, indent=2, sort_keys=True) + "\n")
    serving = {
        "format": EXPORT_FORMAT,
        "views": to_dict(served.views),
        "extract": to_dict(served.extract),
        "dtype": served.dtype,
        "backbone": source,
        "members": members,
    }
    _save_transformers_files(out, serving, side=served.extract.side)
    (out / CARD).write_text(json.dumps(card, indent=2) + "\n")
    (out / README).write_text(readme(card, serving, served.choice, evidence or Evidence()))
    return sorted(p for p in out.rglob("*") if p.is_file())


def export_project(params: dict[str, Any], out_dir: str | Path, config: ExportConfig) -> list[Path]:
    """Export what a trained project serves (`params`: its configuration, or a stage's share holding
    `paths`, `views`, `extract` and `backbone.dtype`), with its card and its records in the README."""
    served = Served.of_project(params)
    paths = load_paths(params)
    evidence = Evidence.of_project(
        validation=Path(paths.validation), metrics=Path(paths.metrics), data=paths.raw
    )
    card = model_card(
        name=config.name,
        hotkey=config.hotkey,
        version=config.version,
        description=config.description or served_description(served.choice, evidence.validator),
        time=config.time,
    )
    return export_model(
        served,
        out_dir,
        card=card,
        backbone=config.backbone,
        hub_id=config.hub_id,
        revision=config.revision,
        evidence=evidence,
    )


def _backbone_source(
    served: Served, backbone: str, hub_id: str | None, revision: str | None
) -> dict[str, Any]:
    """config.json's "backbone": the folder it is copied to, or the hub id and revision; with where the
    project's copy came from and its weights' fingerprint (`backbone` stage), when recorded."""
    if backbone not in BACKBONES:
        raise ValueError(f"export backbone={backbone!r}: expected one of {list(BACKBONES)}")
    manifest = {}
    if served.backbone is not None and (Path(served.backbone) / MANIFEST).is_file():
        manifest = json.loads((Path(served.backbone) / MANIFEST).read_text())
    provenance = {k: manifest[k] for k in ("source", "fingerprint") if k in manifest}
    if backbone == "copy":
        if served.backbone is None:
            raise ValueError(
                f"export backbone=copy: the served backbone is {served.backbone_id!r} on the hub, not a "
                "folder to copy; export it with backbone=hub"
            )
        return {"folder": EXPORT_BACKBONE} | provenance
    hub_id = hub_id or served.backbone_id
    revision = revision or served.revision
    if not hub_id or not revision:
        raise ValueError(
            "export backbone=hub: give the public checkpoint's hub id and its revision (a commit hash): the "
            "heads were trained on those weights, and a branch can move"
        )
    return {"hub_id": hub_id, "revision": revision} | provenance


def _copy_backbone(src: Path, dst: Path) -> None:
    """The files `from_pretrained` reads: its config and safetensors weights (and their shard index)."""
    weights = sorted(src.glob("*.safetensors")) + sorted(src.glob("*.safetensors.index.json"))
    if not (src / "config.json").is_file() or not weights:
        raise FileNotFoundError(f"{src}: no saved backbone (config.json + *.safetensors)")
    dst.mkdir(parents=True)
    for path in [src / "config.json", *weights]:
        shutil.copyfile(path, dst / path.name)


def _save_transformers_files(out: Path, serving: dict[str, Any], *, side: int) -> None:
    """config.json, preprocessor_config.json and the module transformers loads them with."""
    from roadwork.serve.modeling_roadwork import RoadworkConfig, RoadworkImageProcessor, custom_pipelines

    config = RoadworkConfig(serving=serving)
    config.register_for_auto_class()  # AutoConfig -> the saved module's RoadworkConfig (and the file copied)
    config.auto_map = {"AutoModelForImageClassification": "modeling_roadwork.RoadworkForImageClassification"}
    config.custom_pipelines = custom_pipelines()
    config.save_pretrained(out)
    processor = RoadworkImageProcessor(views=serving["views"], side=side)
    processor.register_for_auto_class("AutoImageProcessor")
    processor.save_pretrained(out)
