"""The NATIX string parsers: GPS pairs, Python-list tag strings (never eval'd), free text."""

from __future__ import annotations

import builtins

import pytest

from roadwork.data.parse import ParseError, clean_text, parse_gps, parse_list


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[39.77160604, -86.18823935]", (39.77160604, -86.18823935)),
        ("  [ 40.4406 ,-79.9959 ] ", (40.4406, -79.9959)),
        ("[90, -180]", (90.0, -180.0)),
        ("[-90.0, 180.0]", (-90.0, 180.0)),
        ("[0, 0]", (0.0, 0.0)),
    ],
)
def test_parse_gps_valid(text: str, expected: tuple[float, float]) -> None:
    assert parse_gps(text) == expected


@pytest.mark.parametrize("text", [None, "", "   ", "[]", "None", "null", "NaN"])
def test_parse_gps_absent_is_none(text: str | None) -> None:
    assert parse_gps(text) is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[90.5, 10]", "out of range"),
        ("[-91, 10]", "out of range"),
        ("[10, 180.01]", "out of range"),
        ("[10, -200]", "out of range"),
        ("39.7, -86.1", "expected '\\[lat, lon\\]'"),
        ("[39.7]", "expected two numbers, got 1"),
        ("[1, 2, 3]", "expected two numbers, got 3"),
        ("[north, west]", "not numbers"),
        ("[nan, 10]", "not finite"),
        ("[10, inf]", "not finite"),
    ],
)
def test_parse_gps_rejects(text: str, message: str) -> None:
    with pytest.raises(ParseError, match=message):
        parse_gps(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("['Sunny']", ["Sunny"]),
        ("['Partially Blocked', 'Detour']", ["Partially Blocked", "Detour"]),
        ('["Rainy", " Foggy "]', ["Rainy", "Foggy"]),
        ("('Sunny', 'Windy')", ["Sunny", "Windy"]),
        ("'Cloudy'", ["Cloudy"]),
        ("[]", []),
        ("['None']", []),
        ("['none', '', 'nan', 'N/A', 'null']", []),
        ("['Sunny', 'None']", ["Sunny"]),
        (None, []),
        ("", []),
        ("   ", []),
    ],
)
def test_parse_list(text: str | None, expected: list[str]) -> None:
    assert parse_list(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os')",
        "__import__('os').system('echo pwned')",
        "open('/etc/passwd').read()",
        "[x for x in 'ab']",
        "['Open'",
        "Sunny, Rainy",
        "[1, 2]",
        "['a', 3]",
        "{'a': 'b'}",
        "[['nested']]",
        "[" + "'a', " * 2000 + "]",  # over the length guard
    ],
)
def test_parse_list_rejects(text: str) -> None:
    with pytest.raises(ParseError):
        parse_list(text)


def test_parse_list_never_evaluates(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("eval/exec must not be called on data")

    monkeypatch.setattr(builtins, "eval", forbidden)
    monkeypatch.setattr(builtins, "exec", forbidden)
    assert parse_list("['Sunny', 'Rainy']") == ["Sunny", "Rainy"]
    with pytest.raises(ParseError, match="not a list literal"):
        parse_list("__import__('os')")


@pytest.mark.parametrize(
    ("text", "expected"),
    [(None, None), ("", None), ("   \t\n", None), ("  indianapolis ", "indianapolis"), ("a  b", "a  b")],
)
def test_clean_text(text: str | None, expected: str | None) -> None:
    assert clean_text(text) == expected
