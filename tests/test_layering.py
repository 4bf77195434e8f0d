"""The import graph of the packages: imports point down, no cycles.

Every module of ``singd_opt`` and ``structmat`` is parsed (not imported); an import
of another module of the distribution outside ``if TYPE_CHECKING:`` is an edge. The
graph of ``singd_opt``'s modules and the graph of packages (``singd_opt.blocks``,
``singd_opt.distributed``, ...; a top-level module of ``singd_opt`` counts as its own
package) must both be acyclic, and ``structmat`` must not import ``singd_opt``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
LIBRARIES = ("structmat", "singd_opt")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found = {}
    for library in LIBRARIES:
        for path in (SRC / library).rglob("*.py"):
            found[_module_name(path)] = path
    return found


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """The nodes of ``tree`` outside ``if TYPE_CHECKING:`` blocks (not run at import)."""
    found: list[ast.AST] = []
    pending = [tree]
    while pending:
        node = pending.pop()
        found.append(node)
        for child in ast.iter_child_nodes(node):
            test = getattr(child, "test", None)
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(test):
                pending.extend(child.orelse)
                continue
            pending.append(child)
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The distribution's modules that ``name`` imports (at any place in the file)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            candidates = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for candidate in candidates:
            while candidate and candidate not in modules:
                candidate = candidate.rpartition(".")[0]
            if candidate and candidate != name:
                targets.add(candidate)
    return targets


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _package(module: str) -> str:
    """The package of a module for the package graph.

    ``singd_opt.blocks.kronecker`` -> ``singd_opt.blocks``; a top-level module of
    ``singd_opt`` is its own package; the top-level modules of ``structmat`` form the
    package ``structmat`` (its subpackages stand alone).
    """
    path = _modules()[module]
    if path.name == "__init__.py":
        return module
    parent = module.rpartition(".")[0]
    return module if parent == "singd_opt" else parent


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` (as a path), or ``None``."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*stack[stack.index(target) :], target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def _without_init_reexports(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Drop the edges from a package's ``__init__`` to its own modules (re-exports)."""
    return {
        name: {t for t in targets if not t.startswith(name + ".")}
        for name, targets in graph.items()
    }


def test_no_optimizer_module_imports_in_a_cycle() -> None:
    graph = _without_init_reexports(_graph())
    optimizer = {
        name: {t for t in targets if t.startswith("singd_opt")}
        for name, targets in graph.items()
        if name.startswith("singd_opt")
    }
    assert _cycle(optimizer) is None


def test_no_package_imports_in_a_cycle() -> None:
    graph = _without_init_reexports(_graph())
    packages: dict[str, set[str]] = {}
    for name, targets in graph.items():
        source = _package(name)
        edges = packages.setdefault(source, set())
        edges.update(_package(t) for t in targets if _package(t) != source)
    assert _cycle(packages) is None


def test_structmat_does_not_import_the_optimizer() -> None:
    graph = _graph()
    offenders = {
        name: sorted(t for t in targets if t.startswith("singd_opt"))
        for name, targets in graph.items()
        if name.startswith("structmat")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


@pytest.mark.parametrize(
    ("graph", "expected"),
    [({"a": {"b"}, "b": {"c"}, "c": set()}, None), ({"a": {"b"}, "b": {"a"}}, ["a", "b", "a"])],
)
def test_cycle_finder(graph: dict[str, set[str]], expected: list[str] | None) -> None:
    assert _cycle(graph) == expected
