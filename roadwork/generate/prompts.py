"""Validator-style prompts: a training row's description rewritten to add or remove roadwork.

A StreetVision validator prompts SDXL with captions of real images, rewritten to add or remove cones,
barriers and vests. Here a roadwork row keeps its description when it names a roadwork object, and
gets cones, barriers and workers in hi-vis vests put in front of it when it names none (first, so the
77-token CLIP window never cuts them off). A no-roadwork row's description loses every roadwork phrase
(and the words that tied it to the sentence); where too little is left, or a roadwork word survives,
a template sentence replaces it. A row without a description gets a template sentence of its label.
"""

from __future__ import annotations

import re

import numpy as np

# Roadwork objects by kind (the synthetic world's kinds); a roadwork row naming none gets some.
OBJECT_PATTERNS = {
    "cone": r"(?:traffic )?cones?|pylons?",
    "barrier": r"(?:jersey )?barriers?|barricades?|(?:traffic )?barrels?|drums?",
    # A sign is roadwork only when said so: "a stop sign" is not.
    "sign": r"(?:road ?work|construction|detour|work zone|warning|diamond-shaped)[\w -]{0,24}? signs?"
    r"|arrow boards?",
    "worker": r"(?:road |construction )?workers?|flaggers?|(?:hi-vis|high-visibility|safety) vests?|vests?"
    r"|hard hats?",
    "vehicle": r"construction (?:vehicles?|trucks?|machinery|equipment)|excavators?|bulldozers?|backhoes?"
    r"|cranes?|road rollers?|dump trucks?",
}
# Roadwork words that are not objects: a no-roadwork prompt loses these too.
_WORDS = (
    r"(?:construction|work) (?:zones?|sites?|areas?)|road ?works?|roadworks?|construction|lane closures?"
    r"|closed lanes?|lane shifts?|detours?|caution tape|excavation|paving"
)
ROADWORK = re.compile(rf"\b(?:{'|'.join(OBJECT_PATTERNS.values())}|{_WORDS})\b", re.IGNORECASE)

_MODIFIER = (
    r"orange|white|yellow|red|black|striped|reflective|traffic|temporary|plastic|concrete|small|large|tall"
    r"|diamond-shaped|warning|safety|hi-vis|high-visibility|construction|road|work|several|many|multiple"
)
_ARTICLE = r"(?:a|an|the|some|several|many|few|two|three|four|five|multiple|\d+)\s+"
_GROUP = r"(?:(?:a|an)\s+)?(?:row|line|set|series|group|pair|couple|number|cluster) of\s+"
_WORN = r"vests?|hard hats?|helmets?"
_WEARING = rf"\s+(?:in|wearing|with)\s+(?:a\s+|an\s+)?(?:(?:{_MODIFIER})[\s-]+)*(?:{_WORN})"
# One roadwork phrase: article, quantity, modifiers ("a striped orange and white barrier"), the noun,
# and what a worker wears ("in a hi-vis vest").
_PHRASE = re.compile(
    rf"\b(?:{_ARTICLE})?(?:{_GROUP})?(?:(?:{_MODIFIER})(?:\s*,\s*|\s+and\s+|[\s-]+))*"
    rf"(?:{'|'.join(OBJECT_PATTERNS.values())}|{_WORDS})\b(?:{_WEARING})?",
    re.IGNORECASE,
)
_MARK = "\0"  # stands where a phrase was removed, until the sentence is mended
_WHERE = r"beside|along|near|next to|on|by|lining|blocking|at|in|across|around"
_PLACE_NOUN = r"road|roadside|street|sidewalk|lane|lanes|curb|shoulder|edge of the road|intersection"
_MENDS = (
    (re.compile(rf"{_MARK}(?:\s*(?:,|and|or|&)\s*{_MARK})+"), _MARK),  # a list of removed phrases: one
    (  # "..., with <removed> beside the road": the clause goes
        re.compile(
            rf"(?:\s*,)?\s*\b(?:with|and|plus|including|featuring|or)\s+{_MARK}"
            rf"(?:\s+(?:{_WHERE})\s+(?:the|a|an)\s+(?:{_PLACE_NOUN})\b)?",
            re.IGNORECASE,
        ),
        "",
    ),
    (  # "<removed> on a city street ...": the sentence starts at the place
        re.compile(
            rf"^(?:\s*{_MARK}\s*,?\s*(?:(?:is|are)\s+)?(?:(?:placed|set up|standing|parked)\s+)?"
            rf"(?:(?:{_WHERE})\s+)?)+",
            re.IGNORECASE,
        ),
        "",
    ),
    (re.compile(_MARK), ""),
    (re.compile(r"\s+([,.;:!?])"), r"\1"),
    (re.compile(r"([,;:])(?:\s*[,;:])+"), r"\1"),
    (re.compile(r"\s{2,}"), " "),
)
_MIN_WORDS = 3  # a rewritten sentence shorter than this says nothing: a template replaces it

PLACES = (
    "a city street",
    "a downtown street",
    "a suburban street",
    "a residential road",
    "a rural road",
    "a country road",
    "a multi-lane highway",
    "an industrial street",
    "a busy intersection",
)
CONDITIONS = (
    "on a sunny day",
    "under an overcast sky",
    "in the rain",
    "in fog",
    "in the snow",
    "at dusk",
    "at night",
    "in daylight",
)
ADDED_OBJECTS = (  # one wording of each is put in front of a roadwork row's description
    ("orange traffic cones", "a row of orange traffic cones", "traffic cones"),
    ("construction barriers", "striped road barriers", "orange and white barricades"),
    ("road workers in hi-vis vests", "workers in high-visibility vests", "workers in safety vests"),
)
SIGNS = ("a road work sign", "a road work ahead sign", "a construction sign")
ROADWORK_TEMPLATES = (
    "{place} with {objects} {condition}",
    "a photo of {place} {condition} with {objects}",
    "road work on {place} {condition}: {objects}",
)
CLEAR_TEMPLATES = (
    "{place} {condition}",
    "a photo of {place} {condition}",
    "{place} with light traffic {condition}",
    "{place} with parked cars {condition}",
)


def names_roadwork(text: str) -> bool:
    """Whether `text` names a roadwork object or roadwork itself."""
    return ROADWORK.search(text) is not None


def named_objects(text: str) -> list[str]:
    """The roadwork object kinds (OBJECT_PATTERNS keys) that `text` names, in key order."""
    return [k for k, p in OBJECT_PATTERNS.items() if re.search(rf"\b(?:{p})\b", text, re.IGNORECASE)]


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _sentence(text: str) -> str:
    text = text.strip(" ,;:")
    return f"{text[0].upper()}{text[1:]}" if text else text


def _objects(rng: np.random.Generator, sign: bool) -> str:
    """Cones, barriers and workers in hi-vis vests (one wording each), and maybe a sign."""
    names = [_pick(rng, wordings) for wordings in ADDED_OBJECTS] + ([_pick(rng, SIGNS)] if sign else [])
    return ", ".join(names[:-1]) + " and " + names[-1]


def template(label: int, rng: np.random.Generator) -> str:
    """A sentence of a street scene, with roadwork (label 1) or without (label 0)."""
    place, condition = _pick(rng, PLACES), _pick(rng, CONDITIONS)
    if label:
        objects = _objects(rng, sign=bool(rng.random() < 0.5))
        text = _pick(rng, ROADWORK_TEMPLATES).format(place=place, condition=condition, objects=objects)
        return _sentence(text)
    return _sentence(_pick(rng, CLEAR_TEMPLATES).format(place=place, condition=condition))


def remove_roadwork(text: str) -> str:
    """`text` without its roadwork phrases, the sentence mended around them (may come out empty)."""
    out = _PHRASE.sub(_MARK, text)
    for pattern, replacement in _MENDS:
        out = pattern.sub(replacement, out)
    out = _sentence(out.strip().rstrip(".").strip())
    return f"{out}." if out else out


def prompt_for(description: str | None, label: int, rng: np.random.Generator) -> str:
    """The prompt for a generated image of `label` from a training row's `description`."""
    text = " ".join((description or "").split())
    if not text:
        return template(label, rng)
    if label:
        if named_objects(text):
            return text
        return f"Road work zone with {_objects(rng, sign=False)}. {text}"
    cleared = remove_roadwork(text)
    if names_roadwork(cleared) or len(cleared.split()) < _MIN_WORDS:
        return template(0, rng)
    return cleared


def prompt_words() -> list[str]:
    """The words of every phrase this module writes (a tiny tokenizer learns them whole)."""
    phrases = [*PLACES, *CONDITIONS, *SIGNS, *ROADWORK_TEMPLATES, *CLEAR_TEMPLATES]
    phrases += [w for wordings in ADDED_OBJECTS for w in wordings] + ["road work zone with"]
    words = {w for p in phrases for w in re.findall(r"[a-z]+", p.lower())}
    return sorted(words - {"place", "condition", "objects"})
