"""Parsers for the NATIX string encodings. Never `eval`: these strings come from the data."""

from __future__ import annotations

import ast
import math

# Values that mean "no value" inside a list-string such as "['None']".
_NULL_ITEMS = {"", "none", "null", "nan", "n/a"}
# Tag lists are short; a guard keeps literal_eval away from pathological input.
_MAX_LIST_CHARS = 4096


class ParseError(ValueError):
    """A field whose text does not follow the dataset's encoding."""


def parse_gps(text: str | None) -> tuple[float, float] | None:
    """`"[39.77160604, -86.18823935]"` -> (lat, lon); None/empty -> None.

    Raises ParseError on malformed text or coordinates out of range.
    """
    if text is None:
        return None
    body = text.strip()
    if not body or body.lower() in ("[]", "none", "null", "nan"):
        return None
    if not (body.startswith("[") and body.endswith("]")):
        raise ParseError(f"gps {text!r}: expected '[lat, lon]'")
    parts = [p.strip() for p in body[1:-1].split(",")]
    if len(parts) != 2:
        raise ParseError(f"gps {text!r}: expected two numbers, got {len(parts)}")
    try:
        lat, lon = float(parts[0]), float(parts[1])
    except ValueError as e:
        raise ParseError(f"gps {text!r}: not numbers") from e
    if not (math.isfinite(lat) and math.isfinite(lon)):
        raise ParseError(f"gps {text!r}: not finite")
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        raise ParseError(f"gps {text!r}: out of range (lat in [-90, 90], lon in [-180, 180])")
    return lat, lon


def parse_list(text: str | None) -> list[str]:
    """`"['Partially Blocked', 'Detour']"` -> ['Partially Blocked', 'Detour'].

    `"[]"`, `"['None']"` and null give []. Uses `ast.literal_eval`, which accepts literals only, and
    then checks that the result is a list of strings.
    """
    if text is None:
        return []
    body = text.strip()
    if not body:
        return []
    if len(body) > _MAX_LIST_CHARS:
        raise ParseError(f"list of {len(body)} chars: longer than {_MAX_LIST_CHARS}")
    try:
        value = ast.literal_eval(body)
    except (ValueError, SyntaxError) as e:
        raise ParseError(f"list {text!r}: not a list literal") from e
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ParseError(f"list {text!r}: expected a list of strings")
    return [v.strip() for v in value if v.strip().lower() not in _NULL_ITEMS]


def clean_text(text: str | None) -> str | None:
    """Strip; empty or whitespace-only strings become None."""
    if text is None:
        return None
    text = text.strip()
    return text or None
