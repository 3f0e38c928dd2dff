"""dvc.yaml names, for every stage, each project module the stage's script imports (directly or not):
a change to any of them must rerun the stage, and a missing dep would let `dvc repro` keep stale outputs."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def has_code(init: Path) -> bool:
    """A package `__init__` that does more than carry a docstring and `__version__`."""
    for node in ast.parse(init.read_text()).body:
        docstring = isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
        version = isinstance(node, ast.Assign) and [ast.unparse(t) for t in node.targets] == ["__version__"]
        if not (docstring or version or (isinstance(node, ast.ImportFrom) and node.module == "__future__")):
            return True
    return False


def module_files(name: str) -> set[Path]:
    """The project files that `import name` runs: the module and its packages' `__init__`s with code."""
    parts, found = name.split("."), set()
    for k in range(1, len(parts) + 1):
        path = ROOT.joinpath(*parts[:k])
        if (path / "__init__.py").is_file() and has_code(path / "__init__.py"):
            found.add(path / "__init__.py")
        elif k == len(parts) and path.with_suffix(".py").is_file():
            found.add(path.with_suffix(".py"))
    return found


def imports_of(path: Path) -> set[Path]:
    """Project files `path` imports anywhere in its code (lazy imports inside functions included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            found |= module_files(name)
    return found


def closure(script: Path) -> set[Path]:
    seen, todo = set(), [script]
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            todo.extend(imports_of(path) - seen)
    return seen


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_deps_name_every_module_it_imports(name: str) -> None:
    stage = STAGES[name]
    script = ROOT / (re.search(r"-m (stages\.\w+)", stage["cmd"]).group(1).replace(".", "/") + ".py")
    deps = [ROOT / d for d in stage.get("deps", []) if isinstance(d, str) and not d.startswith("$")]
    missing = sorted(
        str(f.relative_to(ROOT)) for f in closure(script) if not any(f == d or d in f.parents for d in deps)
    )
    assert not missing, f"dvc.yaml stage {name!r} lacks deps on {missing}"
    used = closure(script)
    unused = [str(d.relative_to(ROOT)) for d in deps if d.parts[len(ROOT.parts)] in ("roadwork", "stages")]
    unused = [d for d in unused if not any(f == ROOT / d or ROOT / d in f.parents for f in used)]
    assert not unused, f"dvc.yaml stage {name!r} depends on modules it never imports: {unused}"
