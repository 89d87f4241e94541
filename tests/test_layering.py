"""Layers point one way: memory/ knows nothing of the policies or the engine above it; the CLI, service and
benchmarks reach the engine only through the public API (checked on the import statements of the source)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "videokv"


def imports(path: Path) -> set[str]:
    """The videokv modules a source file imports (absolute names)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("videokv"):
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.startswith("videokv"))
    return names


@pytest.mark.parametrize("path", sorted((SRC / "memory").glob("*.py")), ids=lambda p: p.name)
def test_memory_depends_on_nothing_above_it(path: Path):
    above = ("videokv.policies", "videokv.engine", "videokv.api", "videokv.presets", "videokv.config")
    bad = sorted(m for m in imports(path) if m.startswith(above))
    assert not bad, f"memory/{path.name} imports {bad}"
