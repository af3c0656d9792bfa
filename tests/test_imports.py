"""The import graph: vaeprobe's modules import one another without a cycle (counting imports
inside functions too: a lazy import hides a circle, it does not remove it), the library never
imports trainers/ or analyses/, and trainers/ finds its model families in vaeprobe.models, never
in vaeprobe.adapters."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def modules(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of ``package`` under ``root``."""
    found = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imported_names(name: str, path: Path) -> set[str]:
    """Every dotted name ``path`` imports, anywhere in the file (relative imports resolved)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            # pkg.name is a module, or a name defined in pkg (graph() walks up to the module)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports (``from pkg import mod`` counts as
    importing ``mod``; a parent package is not an edge unless imported by name)."""
    known = modules(root, package)
    edges = {}
    for name, path in known.items():
        targets = set()
        for imported in imported_names(name, path):
            if imported.split(".")[0] != package:
                continue
            while imported not in known and "." in imported:
                imported = imported.rpartition(".")[0]
            if imported in known and imported != name:
                targets.add(imported)
        edges[name] = targets
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search, three colours)."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(edges):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_cycle_finder_finds_a_lazy_circle(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "a.py").write_text("from pkg import b\n")
    (tmp_path / "pkg" / "b.py").write_text("def f():\n    from .c import g\n")
    (tmp_path / "pkg" / "c.py").write_text("import pkg.a\n")
    assert find_cycle(graph(tmp_path, "pkg")) == ["pkg.a", "pkg.b", "pkg.c", "pkg.a"]
    (tmp_path / "pkg" / "c.py").write_text("import numpy\n")
    assert find_cycle(graph(tmp_path, "pkg")) is None


def test_vaeprobe_has_no_import_cycle():
    edges = graph(ROOT, "vaeprobe")
    assert len(edges) > 40 and "vaeprobe.adapters.native" in edges["vaeprobe.adapters"]
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("package, forbidden", [
    ("vaeprobe", ("trainers", "analyses")),
    ("trainers", ("vaeprobe.adapters", "analyses")),
])
def test_arrows_point_one_way(package, forbidden):
    offending = [f"{name} imports {imported}"
                 for name, path in modules(ROOT, package).items()
                 for imported in imported_names(name, path)
                 if any(imported == f or imported.startswith(f + ".") for f in forbidden)]
    assert not offending, offending
