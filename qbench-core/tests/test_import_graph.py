"""Imports inside each package run one way (graphcore-research/gfloat's habit: facts below,
algorithms above, nothing importing back).

Every module of every ``qbench-*/src`` package is parsed with ``ast`` (nothing is imported),
and each import of a sibling module -- at module level, under ``if TYPE_CHECKING:``, or
inside a function, where a cycle usually hides -- is an edge of that package's graph. The
graph must have no cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SOURCES = sorted(REPO.glob("qbench-*/src"))

#: Cycles found in packages this test's authors may not edit: each one is an expected
#: failure (strict, so that fixing the cycle makes the mark fail until it is removed).
KNOWN_CYCLES: dict[str, str] = {}


def package_modules(src: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every package directly under ``src``."""
    modules = {}
    for package in sorted(p for p in src.iterdir() if (p / "__init__.py").is_file()):
        for path in sorted(package.rglob("*.py")):
            parts = path.relative_to(src).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def import_edges(name: str, path: Path, modules: dict[str, Path]) -> set[tuple[str, str, int]]:
    """(importer, imported sibling, line) for every import statement anywhere in ``path``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    edges = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # ``from . import fused`` imports the submodule; ``from .x import y`` imports x
            targets = [
                f"{module}.{alias.name}" if f"{module}.{alias.name}" in modules else module
                for alias in node.names
            ]
        for target in targets:
            while target and target not in modules:  # import a.b.c -> the deepest known module
                target = target.rpartition(".")[0]
            if target and target != name:
                edges.add((name, target, node.lineno))
    return edges


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a closed path of module names, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for successor in sorted(graph.get(node, ())):
            if state.get(successor) == 1:
                return path[path.index(successor) :] + [successor]
            if successor not in state:
                found = visit(successor)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def package_graph(src: Path) -> tuple[dict[str, set[str]], dict[tuple[str, str], int]]:
    modules = package_modules(src)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    lines: dict[tuple[str, str], int] = {}
    for name, path in modules.items():
        for importer, imported, line in import_edges(name, path, modules):
            graph[importer].add(imported)
            lines.setdefault((importer, imported), line)
    return graph, lines


def test_the_walk_sees_function_local_imports_and_finds_cycles(tmp_path: Path) -> None:
    """The detector itself: a cycle closed by a function-local import is found."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from . import b\n")
    (package / "b.py").write_text("def f():\n    from .c import g\n")
    (package / "c.py").write_text("import pkg.a\n")
    graph, _ = package_graph(tmp_path)
    assert graph["pkg.b"] == {"pkg.c"}
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.c", "pkg.a"]
    (package / "c.py").write_text("import torch\nfrom pkg import __version__\n")
    graph, _ = package_graph(tmp_path)
    assert graph["pkg.c"] == {"pkg"} and find_cycle(graph) is None


@pytest.mark.parametrize(
    "src",
    [
        pytest.param(
            src,
            id=src.parent.name,
            marks=[pytest.mark.xfail(strict=True, reason=KNOWN_CYCLES[src.parent.name])]
            if src.parent.name in KNOWN_CYCLES
            else [],
        )
        for src in SOURCES
    ],
)
def test_package_imports_have_no_cycle(src: Path) -> None:
    graph, lines = package_graph(src)
    assert len(graph) > 1, f"no modules found under {src}"
    cycle = find_cycle(graph)
    if cycle is not None:
        steps = [f"{a} -> {b} (line {lines[a, b]})" for a, b in zip(cycle, cycle[1:], strict=False)]
        pytest.fail(f"import cycle in {src.parent.name}: " + "; ".join(steps))


def test_formats_layers_run_one_way() -> None:
    """qbench-formats' layering: bits imports nothing of its own; the twins only bits."""
    graph, _ = package_graph(REPO / "qbench-formats" / "src")
    assert graph["qbench_formats.bits"] == set()
    assert graph["qbench_formats.reference"] == {"qbench_formats.bits"}
    assert graph["qbench_formats.fused"] == {"qbench_formats.bits"}
    assert "qbench_formats.families" not in graph["qbench_formats.quantizer"]
