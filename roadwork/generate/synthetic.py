"""The embedded default's generator: the synthetic world's second style instead of a diffusion model.

- image-to-image: the training row's own scene (its synth unit, found from the row's dataset id),
  re-drawn in a style drawn from the generated row's seed; the challenges' re-drawing of the same
  row uses the unit's own style seed, so the two differ;
- text-to-image: a new scene (new layout from the generated row's seed) showing what the source row's
  `scene_description` says (`read_scene`: the reverse of `roadwork.synth.text`'s wordings, which also
  reads plain English descriptions): its roadwork objects, environment, weather and daytime (`scene_for`:
  a row without a description takes them from its template prompt, objects aside). What the text
  leaves out is drawn as synth draws it (objects for the label; a label-0 scene never shows roadwork),
  and the scene is rendered in the second style at the source's frame size.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
from PIL import Image

from roadwork.generate.prompts import named_objects
from roadwork.synth.dataset import (
    SynthConfig,
    Unit,
    frame_size,
    row_position,
    row_units,
    scene_spec,
    unit_frames,
)
from roadwork.synth.scene import render_frames
from roadwork.synth.style import draw_style

# Words that place a description in the synthetic world's vocabulary, first match wins (a "city
# highway" is a highway, "rain under grey clouds" is rain).
ENVIRONMENT_WORDS = {
    "Highway": r"highways?|freeways?|interstates?|motorways?|expressways?",
    "Industrial": r"industrial|warehouses?|factory|factories",
    "Suburban": r"suburban|suburbs?|residential|neighbou?rhoods?",
    "Rural": r"rural|country|countryside|farmland",
    "Urban": r"city|downtown|urban",
}
WEATHER_WORDS = {
    "snow": r"snow\w*",
    "fog": r"fog\w*|mist\w*|haze|hazy",
    "rain": r"rain\w*|drizzl\w*",
    "cloudy": r"overcast|cloudy|clouds?",
    "sunny": r"clear sky|clear weather|sunny|sunshine|sunlit",
}
DAYTIME_WORDS = {
    "Dark": r"night\w*|after dark|dark",
    "Dusk": r"dusk|twilight|sunset|sunrise|dawn",
    "Light": r"daylight|daytime|during the day",
}
_I2I, _T2I = 1, 2  # generator purposes under a generated row's seed


@dataclasses.dataclass(frozen=True)
class SceneWords:
    """What a description says about a scene, in the synthetic world's vocabulary (None: not said)."""

    environment: str | None
    weather: str | None
    daytime: str | None
    objects: tuple[str, ...]  # roadwork object kinds named, in ROADWORK_KINDS order


def _first(table: dict[str, str], text: str) -> str | None:
    return next((key for key, words in table.items() if re.search(rf"\b(?:{words})\b", text, re.I)), None)


def read_scene(description: str | None) -> SceneWords:
    """The scene a description names. A description that names a place or weather but no time of day
    is in daylight: synth's daylight wording is often no words at all."""
    text = description or ""
    environment, weather = _first(ENVIRONMENT_WORDS, text), _first(WEATHER_WORDS, text)
    daytime = _first(DAYTIME_WORDS, text) or ("Light" if environment or weather else None)
    return SceneWords(environment, weather, daytime, tuple(named_objects(text)))


def scene_for(description: str | None, prompt: str) -> SceneWords:
    """What a text-to-image scene shows: what the source's description says; for a row without one,
    the place, weather and time of its template prompt (so the stored prompt describes the picture),
    with the objects drawn as synth draws them."""
    if description and description.strip():
        return read_scene(description)
    return dataclasses.replace(read_scene(prompt), objects=())


class SyntheticWorld:
    """Draws generated rows from the synthetic world made by `synth` (the config of the raw dataset)."""

    def __init__(self, synth: SynthConfig) -> None:
        self.synth = synth
        self._units: dict[str, list[tuple[Unit, int]]] = {}  # per split: row position -> (unit, frame)

    def unit_of(self, source_id: int | None, label: int, size: tuple[int, int]) -> tuple[Unit, int] | None:
        """The (unit, frame) that rendered the dataset row `source_id`, or None when the row is not one
        this synth config rendered (its label or frame size disagree, or it copies another row)."""
        where = None if source_id is None else row_position(self.synth, source_id)
        if where is None:
            return None
        split, position = where
        units = self._units.setdefault(split, row_units(self.synth, split))
        if position >= len(units):
            return None
        unit, frame = units[position]
        if unit.label != label or frame_size(self.synth.scale, unit.kind == "phone") != tuple(size):
            return None
        return unit, frame

    def redraw(self, unit: Unit, frame: int, seed: int) -> Image.Image:
        """Image-to-image: frame `frame` of `unit` re-drawn in a style drawn from `seed`."""
        style = draw_style(np.random.default_rng([seed, _I2I]))
        return Image.fromarray(unit_frames(self.synth, unit, style)[frame].image)

    def draw(self, words: SceneWords, label: int, size: tuple[int, int], seed: int) -> Image.Image:
        """Text-to-image: a new scene of `label` at `size` (width, height) showing `words`."""
        rng = np.random.default_rng([seed, _T2I])
        objects = None
        if label and words.objects:  # each named kind at least once, as many objects as synth draws
            lo, hi = self.synth.objects_per_image
            extra = max(0, int(rng.integers(lo, hi + 1)) - len(words.objects))
            more = rng.integers(len(words.objects), size=extra)
            objects = (*words.objects, *(words.objects[i] for i in more))
        spec = scene_spec(
            self.synth, label, size, rng, objects=objects,
            weather=words.weather, daytime=words.daytime, environment=words.environment,
        )  # fmt: skip
        style_rng, layout_rng = rng.spawn(2)
        frame = render_frames(spec, layout_rng, 1, style=draw_style(style_rng))[0]
        return Image.fromarray(frame.image)
