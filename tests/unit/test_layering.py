"""The package's rooms keep their direction: api → engine → store, never back, and only the
rooms that own model weights (engine, convert) import MLX."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "mlxollama"

# room → rooms it must never import (directly or inside a function)
FORBIDDEN = {
    "store": {"api", "engine", "convert", "cli", "template", "parsers", "server"},
    "template": {"api", "engine", "convert", "cli", "parsers", "store", "server"},
    "parsers": {"api", "engine", "convert", "cli", "template", "store", "server"},
    "engine": {"api", "convert", "cli", "server"},
    "convert": {"api", "cli", "server"},
    "api": {"cli", "server"},
}
MLX_ROOMS = {"engine", "convert"}


def room_of(module: str) -> str:
    """`mlxollama.api.app` → `api`; a top-level module (`mlxollama.config`) is its own room."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "mlxollama"


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports_of(module: str, path: Path) -> set[str]:
    """Absolute names of everything the file imports, relative imports resolved."""
    is_package = path.name == "__init__.py"
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
                names.add(target)
                if not node.module:  # `from . import x`: x is a module of that package
                    names.update(f"{target}.{a.name}" for a in node.names)
            else:
                names.add(node.module)
    return names


def graph() -> dict[str, set[str]]:
    return {m: imports_of(m, p) for m, p in modules().items()}


def test_rooms_never_import_against_the_flow():
    wrong = []
    for module, names in graph().items():
        room = room_of(module)
        for name in names:
            if name.startswith("mlxollama.") and room_of(name) in FORBIDDEN.get(room, set()):
                wrong.append(f"{module} imports {name}")
    assert not wrong, "\n".join(wrong)


def test_only_engine_and_convert_import_mlx():
    wrong = [
        f"{m} imports {n}"
        for m, names in graph().items()
        for n in names
        if (n == "mlx" or n.startswith(("mlx.", "mlx_lm"))) and room_of(m) not in MLX_ROOMS
    ]
    assert not wrong, "\n".join(wrong)


def test_no_two_rooms_import_each_other():
    edges = defaultdict(set)
    for module, names in graph().items():
        for name in names:
            if name.startswith("mlxollama.") and room_of(name) != room_of(module):
                edges[room_of(module)].add(room_of(name))
    # Depth-first search for a cycle between rooms (top-level modules count as rooms too).
    state: dict[str, int] = {}

    def visit(room, trail):
        state[room] = 1
        for nxt in edges[room]:
            if state.get(nxt) == 1:
                raise AssertionError("rooms import each other: " + " → ".join(trail + [room, nxt]))
            if nxt not in state:
                visit(nxt, trail + [room])
        state[room] = 2

    for room in list(edges):
        if room not in state:
            visit(room, [])


def test_the_check_sees_a_violation():
    # The resolver must find relative imports, or the rules above would pass vacuously.
    names = imports_of("mlxollama.api.app", PACKAGE / "api" / "app.py")
    assert any(n.startswith("mlxollama.errors") for n in names), names
