"""The library's floors: a module imports only from its own floor or the floors below it.

    4  report/, serve/, scoring.py, cli.py  what a person reads or runs
    3  tta/, ensemble/                      refining and combining trained members
    2  train/, pretrain/                    training heads on cached features; the tiny backbone
    1  views/, features/, masks/, generate/ cutting views, running models, the caches, generated data
    0  config, data/, models/, metrics, predictions, synth/, device, distributed, progress

`models/` takes tensors, never paths, and `data/` (what a real run reads) never imports the synthetic
world `synth/`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "roadwork"
FLOORS = {
    "report": 4,
    "serve": 4,
    "scoring": 4,
    "cli": 4,
    "tta": 3,
    "ensemble": 3,
    "train": 2,
    "pretrain": 2,
    "views": 1,
    "features": 1,
    "masks": 1,
    "generate": 1,
    **dict.fromkeys(("config", "data", "models", "metrics", "predictions", "synth", "device"), 0),
    **dict.fromkeys(("distributed", "progress", "tiny_clip", "__init__"), 0),
}
MODULES = sorted(ROOT.rglob("*.py"))


def top(path: Path) -> str:
    """The first part of a module's path under roadwork/ (its folder, or the file's stem)."""
    return path.relative_to(ROOT).parts[0].removesuffix(".py")


def roadwork_imports(path: Path) -> set[str]:
    """The `roadwork.X` parts imported anywhere in `path` (lazy imports inside functions included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        found |= {name.split(".")[1] for name in names if name.startswith("roadwork.")}
    return found


def test_every_module_has_a_floor():
    assert {top(path) for path in MODULES} <= set(FLOORS)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_stay_on_or_below_the_module_floor(path: Path):
    floor = FLOORS[top(path)]
    above = sorted(name for name in roadwork_imports(path) if FLOORS[name] > floor)
    assert not above, f"{path.relative_to(ROOT)} (floor {floor}) imports from a floor above: {above}"


def test_real_data_and_models_never_import_the_synthetic_world_or_paths():
    for path in [*(ROOT / "data").rglob("*.py"), *(ROOT / "models").rglob("*.py")]:
        assert "synth" not in roadwork_imports(path), path
    for path in (ROOT / "models").rglob("*.py"):
        assert not roadwork_imports(path) - {"models"}, f"{path}: models import only models"
