"""What a published model says about itself: `model_card.json` (the fields NATIX's backend checks,
shared VALIDATOR.md) and the README model card of an exported folder.

The card's fields are checked before anything is written: a missing, empty or malformed field is refused
naming the field. The README is written from the project's own records when they exist (what the model
was trained on, its scores on the validator-style test challenges per protocol and half); it holds no
timing and no clock time, so the same project exports the same README.
"""

from __future__ import annotations

import datetime
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from roadwork.data.images import MAX_PIXELS

CARD_FIELDS = ("model_name", "description", "version", "submitted_by", "submission_time")
VERSION_RE = re.compile(r"^\d+\.\d+\.\d+$")


class CardError(ValueError):
    """A model card field that is missing or malformed (the message names it)."""


def validate_card(card: Any) -> dict[str, str]:
    """`card` as the backend expects it: exactly CARD_FIELDS, each a non-empty string; `version` X.Y.Z;
    `submission_time` an ISO 8601 timestamp with its UTC offset. CardError names the first bad field."""
    if not isinstance(card, dict):
        raise CardError(f"model card: expected a mapping of {list(CARD_FIELDS)}, got {type(card).__name__}")
    for name in CARD_FIELDS:
        if name not in card:
            raise CardError(f"model card: field {name!r} is missing")
        value = card[name]
        if not isinstance(value, str) or not value.strip():
            raise CardError(f"model card: field {name!r} must be a non-empty string, got {value!r}")
    unknown = sorted(set(card) - set(CARD_FIELDS))
    if unknown:
        raise CardError(f"model card: unknown field(s) {unknown}; the fields are {list(CARD_FIELDS)}")
    for name in ("model_name", "submitted_by", "version"):
        if card[name] != card[name].strip() or any(c.isspace() for c in card[name]):
            raise CardError(f"model card: field {name!r} must not hold white space, got {card[name]!r}")
    if not VERSION_RE.match(card["version"]):
        raise CardError(f"model card: field 'version' is {card['version']!r}: expected X.Y.Z")
    try:
        when = datetime.datetime.fromisoformat(card["submission_time"])
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise CardError(
            f"model card: field 'submission_time' is {card['submission_time']!r}: expected an ISO 8601 "
            "timestamp with a UTC offset (e.g. 2026-05-01T12:00:00+00:00)"
        )
    return {name: card[name] for name in CARD_FIELDS}


def model_card(
    *, name: str, hotkey: str, version: str, description: str, time: str | None = None
) -> dict[str, str]:
    """A checked `model_card.json`; `time` defaults to now (UTC, ISO 8601, seconds)."""
    when = time or datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    return validate_card(
        {
            "model_name": name,
            "description": description,
            "version": version,
            "submitted_by": hotkey,
            "submission_time": when,
        }
    )


def served_description(choice: dict[str, Any], validator: dict[str, Any] | None) -> str:
    """What is served, in one sentence (`choice`: ensemble.json), with the validator-mode scores
    (`validator`: metrics/validator.json) when they have been measured."""
    routes = "; ".join(f"{r['name']}: {', '.join(r['members'])}" for r in choice["routes"])
    text = f"roadwork: frozen DINOv3 features of 12 views per image, heads by input size ({routes})"
    if validator and validator.get("v_mcc") is not None:
        text += f"; validator-style challenges of every protocol: MCC {validator['v_mcc']:.3f} on average"
        if validator.get("v_worst") is not None:
            text += f", {validator['v_worst']:.3f} at worst"
    return text


def _read(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


@dataclass(frozen=True)
class Evidence:
    """The project's records an exported README reports; each None where it has not been measured."""

    details: dict[str, Any] | None = None  # <validation>/details.json: per protocol, domain and level
    validator: dict[str, Any] | None = None  # metrics/validator.json: the headline
    ingest: dict[str, Any] | None = None  # metrics/ingest.json: the rows it was trained and tested on
    data: str | None = None  # the dataset root it was trained on (paths.raw)

    @classmethod
    def of_project(cls, *, validation: Path, metrics: Path, data: str | None) -> Evidence:
        """The records of a trained project, from its `paths.validation` and `paths.metrics`."""
        return cls(
            details=_read(Path(validation) / "details.json"),
            validator=_read(Path(metrics) / "validator.json"),
            ingest=_read(Path(metrics) / "ingest.json"),
            data=data,
        )


def readme(card: dict[str, str], serving: dict[str, Any], choice: dict[str, Any], evidence: Evidence) -> str:
    """The README model card of an exported folder (Hugging Face front matter + markdown)."""
    backbone, rule, side = serving["backbone"], serving["views"], serving["extract"]["side"]
    source = backbone.get("hub_id") or backbone.get("source") or "a saved DINOv3"
    where = f"`{backbone['hub_id']}` at revision `{backbone['revision']}`" if "hub_id" in backbone else None
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: image-classification",
        "tags: [roadwork, streetvision, dinov3, image-classification]",
        "---",
        "",
        f"# {card['model_name']} {card['version']}",
        "",
        card["description"],
        "",
        f"Submitted by `{card['submitted_by']}` (`model_card.json` holds the submission time).",
        "",
        "## What it answers",
        "",
        "One image (a JPEG or any format PIL reads, any size, no metadata) -> the probability that it shows",
        "a road work zone, in [0, 1]; above 0.5 is roadwork (a StreetVision validator rounds there). Labels:",
        "`Roadwork` and `None`.",
        "",
        "```python",
        "from transformers import pipeline",
        "",
        'classify = pipeline("image-classification", model=FOLDER_OR_REPO, trust_remote_code=True)',
        'roadwork = next(s["score"] for s in classify(image, top_k=None) if s["label"] == "Roadwork")',
        "",
        "from roadwork.serve.detector import RoadworkDetector  # the same answer, without the pipeline",
        "",
        "detector = RoadworkDetector.from_pretrained(FOLDER_OR_REPO)",
        "probability = detector(image)",
        "```",
        "",
        "The code in this folder (`modeling_roadwork.py`) imports the `roadwork` package, which must be",
        "installed. Pass the image as opened (`Image.open(...)`): a JPEG is then decoded at the reduced",
        "scale its views need.",
        "",
        "## The model",
        "",
        f"- Backbone: {source}, frozen, {serving['dtype']} weights"
        + (f", fetched from the hub: {where}" if where else ", saved in `backbone/`")
        + ".",
        f"- Views: 12 per image (the whole image, a {rule['grid']}x{rule['grid']} grid overlapping by "
        f"{rule['overlap']:g}, a centre and a right square), each resized to {side} px; per view the CLS "
        "token and the mean and max of the patch tokens.",
    ]
    for route in choice["routes"]:
        size = f"longer side at most {route['max_side']} px" if route["max_side"] else "any other size"
        lines.append(
            f"- Images of {size} (`{route['name']}`): the mean logit of {', '.join(route['members'])}, "
            f"calibrated so that its chosen cut sits at 0.5 (`ensemble.json`)."
        )
    lines += ["", "## Trained on", "", *_trained_on(evidence), "", "## Measured", "", *_measured(evidence)]
    lines += ["", "## Limits", "", *_limits(evidence), ""]
    return "\n".join(lines)


def _trained_on(evidence: Evidence) -> list[str]:
    data = f"the images under `{evidence.data}`" if evidence.data else "the project's dataset"
    lines = [
        f"The labelled train split of {data} (NATIX schema); its test split was held out: the challenges",
        "below are cut from it.",
    ]
    splits = (evidence.ingest or {}).get("splits", {})
    for split, counts in sorted(splits.items(), key=lambda item: item[0] != "train"):
        role = "trained on" if split == "train" else "held out"
        lines.append(
            f"- {split} ({role}): {counts.get('rows_indexed', '?')} images ({counts.get('label_1', '?')} "
            f"roadwork, {counts.get('label_0', '?')} not)"
        )
    return lines


def _measured(evidence: Evidence) -> list[str]:
    """Per protocol and half, the served model on the project's validator-style test challenges."""
    if not evidence.details:
        return ["Not measured: the project's `validate` stage had not run when this was exported."]
    lines = [
        "The served model on validator-style challenges cut from the held-out test split (shared protocols:",
        "224 px crops and letterboxes at augmentation levels 0-3, and images at their own size; real and",
        "generated halves), one image per call, as a validator scores a miner. MCC is floored at 0; the",
        "intervals are 95 % bootstrap intervals over source images' groups.",
        "",
        "| protocol | half | challenges | MCC [95 % CI] | accuracy | reward |",
        "|---|---|---|---|---|---|",
    ]
    for protocol, block in evidence.details.get("protocols", {}).items():
        for half, s in {"all": block["all"], **block.get("domains", {})}.items():
            mcc = f"{s['mcc']:.3f} [{s['mcc_lo']:.3f}, {s['mcc_hi']:.3f}]"
            rest = f"{s['accuracy']:.3f} | {s['reward']:.3f}"
            lines.append(f"| {protocol} | {half} | {s.get('n', '')} | {mcc} | {rest} |")
    headline = evidence.validator or {}
    if headline.get("v_mcc") is not None:
        lines += ["", f"Averaged over the protocols: MCC {headline['v_mcc']:.3f}."]
    return lines


def _limits(evidence: Evidence) -> list[str]:
    lines = [
        "- Scores are the project's own measurements on its own challenges, not a validator's.",
        "- No metadata is used: the served heads answer images alone, as a validator sends them.",
        f"- Images that would decode to more than {MAX_PIXELS / 1e6:g} MP are refused, not answered.",
        "- Answer time depends on the machine; the backbone dominates it (a validator allows 9 s).",
    ]
    if evidence.data and "synthetic" in evidence.data:
        lines.insert(0, "- Trained on synthetic images: its scores say nothing about real street photos.")
    return lines
