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


# The service, the benchmarks, the CLIs and the integrations hold sessions through the public API only
# (`VideoQA`, `Session`, the journal of a session, the config and presets, the input types), which is also
# what makes a session movable between processes (issue 13): no import of the engine, the memory, the
# policies, the model adapters or the persistence internals, and no reach into a session's engine or a
# VideoQA's adapter.
PUBLIC = (
    "videokv.api",
    "videokv.journal",
    "videokv.storage",  # where journals and saves live (a folder, an object store): no engine inside
    "videokv.errors",
    "videokv.config",
    "videokv.presets",
    "videokv.generation",
    "videokv.video",
)
CLIENT_LAYERS = ("server", "bench", "integrations")
CLIENT_MODULES = ("cli.py", "demo.py")
OWN = tuple(f"videokv.{name}" for name in (*CLIENT_LAYERS, "cli", "demo"))


def client_files() -> list[Path]:
    files = [p for layer in CLIENT_LAYERS for p in sorted((SRC / layer).rglob("*.py"))]
    return files + [SRC / name for name in CLIENT_MODULES]


def private_reaches(path: Path) -> list[str]:
    """`x.engine` / `x.adapter` attribute reads (a session's engine, a VideoQA's model adapter)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and node.attr in ("engine", "adapter"):
            out.append(f"line {node.lineno}: .{node.attr}")
    return out


@pytest.mark.parametrize("path", client_files(), ids=lambda p: str(p.relative_to(SRC)))
def test_service_and_benchmarks_use_the_public_api_only(path: Path):
    bad = sorted(m for m in imports(path) if not m.startswith(PUBLIC + OWN) and m != "videokv")
    assert not bad, f"{path.relative_to(SRC)} imports {bad}: use videokv.api (VideoQA, Session) instead"
    reaches = private_reaches(path)
    assert not reaches, f"{path.relative_to(SRC)} reaches past the public API: {reaches}"


def test_the_layering_check_catches_a_reach_into_the_engine(tmp_path: Path):
    """The check itself: a module that imports the engine and reads `session.engine` is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from videokv.engine import Frame\nfrom videokv.api import Session\n\n"
        "def f(s: Session):\n    return s.engine.memory_stats()\n"
    )
    assert sorted(m for m in imports(bad) if not m.startswith(PUBLIC + OWN)) == ["videokv.engine"]
    assert private_reaches(bad) == ["line 5: .engine"]
