"""The dependency direction of DESIGN.md is a rule: checked on every import."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

QT = ("PyQt6", "PyQt5", "PySide6", "PySide2", "qtpy", "superqt", "pymmcore_widgets", "pytestqt")
CORE = ("pymmcore", "pymmcore_plus", "pymmcore_nano", "useq")

# package -> top-level modules it must never import
FORBIDDEN = {
    "acquisition": (*QT, "gui", "analysis", "cordscope"),
    "analysis": (*QT, "gui", "cordscope", *CORE),
}
# analysis may read scans (acquisition.storage), plans (acquisition.plan: models, no hardware) and the
# pixel-size affine's convention (acquisition.pixel_geometry, pure numpy)
ANALYSIS_MAY_USE = (
    "acquisition.storage",
    "acquisition.errors",
    "acquisition.plan",
    "acquisition.pixel_geometry",
)


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def _violations(package: str) -> list[str]:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, module in _imports(path):
            top = module.split(".")[0]
            if top in FORBIDDEN[package]:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
            if package == "analysis" and top == "acquisition" and not module.startswith(ANALYSIS_MAY_USE):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    return bad


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_respects_layering(package):
    assert _violations(package) == []


def test_checker_catches_a_violation(tmp_path, monkeypatch):
    pkg = tmp_path / "analysis"
    pkg.mkdir()
    (pkg / "bad.py").write_text(
        "from PyQt6 import QtCore\nimport pymmcore_plus\nfrom acquisition.hardware import x\n"
    )
    monkeypatch.setattr(__import__(__name__, fromlist=["ROOT"]), "ROOT", tmp_path)
    assert len(_violations("analysis")) == 3
