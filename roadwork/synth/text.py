"""The synthetic rows' `scene_description`: a sentence about the scene, generic or naming what is drawn.

Each phrase has two wordings, one drawn per row; an informative description names the roadwork objects
drawn on and beside the road.
"""

from __future__ import annotations

import numpy as np

from roadwork.synth.scene import DrawnObject, SceneSpec

ENV_TEXT = {
    "Urban": ("a city street", "a downtown street"),
    "Suburban": ("a suburban street", "a residential road"),
    "Rural": ("a rural road", "a country road"),
    "Highway": ("a highway", "a multi-lane highway"),
    "Industrial": ("a road through an industrial area", "an industrial street"),
}
WEATHER_TEXT = {
    "sunny": ("under a clear sky", "in clear weather"),
    "cloudy": ("under an overcast sky", "under grey clouds"),
    "rain": ("in the rain", "in heavy rain"),
    "fog": ("in thick fog", "in fog"),
    "snow": ("in falling snow", "in the snow"),
}
TIME_TEXT = {
    "Light": ("", " in daylight"),
    "Dusk": (" at dusk", " at twilight"),
    "Dark": (" at night", " after dark"),
}
OBJECT_TEXT = {
    "cone": "orange traffic cones",
    "barrier": "a striped orange and white barrier",
    "sign": "a diamond-shaped road work sign",
    "worker": "a road worker in a hi-vis vest",
    "vehicle": "a yellow construction vehicle",
}
MAX_TEXT = 385  # characters at most: a longer sentence is cut


def describe(
    spec: SceneSpec,
    objects: list[DrawnObject],
    informative: bool,
    rng: np.random.Generator,
) -> str:
    """A generic sentence about the scene, or one naming the roadwork objects drawn and where they are."""
    env, weather, time = (
        texts[spec_key][int(rng.integers(2))]
        for texts, spec_key in (
            (ENV_TEXT, spec.environment),
            (WEATHER_TEXT, spec.weather),
            (TIME_TEXT, spec.daytime),
        )
    )
    where = f"{env} {weather}{time}"
    if not informative:
        text = where
    else:
        on = _join([OBJECT_TEXT[k] for k in dict.fromkeys(o.kind for o in objects if o.on_road)])
        off = _join(
            [
                OBJECT_TEXT[k]
                for k in dict.fromkeys(o.kind for o in objects if not o.on_road)
                if not any(o.on_road and o.kind == k for o in objects)
            ]
        )
        text = (
            f"{on} on {where}, with {off} beside the road"
            if on and off
            else (f"{on} on {where}" if on else f"{off} beside {where}")
        )
    text = f"{text[0].upper()}{text[1:]}."
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "."


def _join(names: list[str]) -> str:
    return ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else "".join(names)
