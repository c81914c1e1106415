"""No import circle inside converter/, counting imports inside functions too.

A lazy in-function import keeps a heavy library (TensorFlow, onnx) off the import path; it
must not hide a circle between two of our own modules. ``converted``, ``source_model`` and
``tf_runtime`` exist so that the builders, the loaders and ``conversion`` need not import one
another both ways.
"""

from __future__ import annotations

import ast
from pathlib import Path

import converter

PACKAGE = "converter"
ROOT = Path(converter.__file__).parent


def _module_name(path: Path) -> str:
    return PACKAGE if path.stem == "__init__" else f"{PACKAGE}.{path.stem}"


def _imported(node: ast.AST, modules: set[str]) -> set[str]:
    """The package modules one import statement loads (``from converter import x`` loads the package)."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name in modules}
    if not isinstance(node, ast.ImportFrom):
        return set()
    # The package is flat, so a relative import (`from .x import y`, `from . import x`) starts at it.
    base = ".".join([PACKAGE, *filter(None, [node.module])]) if node.level else node.module or ""
    found = {base} & modules
    found |= {f"{base}.{a.name}" for a in node.names} & modules
    return found


def _names_the_package(node: ast.AST) -> bool:
    """``import converter``, ``from converter import y`` or ``from . import y``.

    ``from converter.x import y`` runs converter/__init__ first too, but that is entering the
    package, not an edge to its ``__init__``.
    """
    if isinstance(node, ast.Import):
        return any(a.name == PACKAGE for a in node.names)
    if isinstance(node, ast.ImportFrom):
        return (node.module == PACKAGE) if not node.level else node.module is None
    return False


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Each module of the package and the package modules it imports anywhere in its body."""
    paths = {_module_name(p): p for p in root.glob("*.py")}
    modules = set(paths)
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        nodes = list(ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))))
        edges = set().union(*(_imported(node, modules) for node in nodes))
        if not any(_names_the_package(node) for node in nodes):
            edges.discard(PACKAGE)
        edges.discard(name)
        graph[name] = edges
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_converter_has_no_import_circle() -> None:
    graph = import_graph()
    assert graph.get(f"{PACKAGE}.conversion"), "the import graph came out empty"
    assert circles(graph) == []


def test_the_check_sees_a_circle_made_by_an_in_function_import(tmp_path: Path) -> None:
    (tmp_path / "__init__.py").write_text("")
    (tmp_path / "a.py").write_text("from converter.b import thing\n")
    (tmp_path / "b.py").write_text("def thing():\n    from converter.a import other\n    return other\n")
    (tmp_path / "c.py").write_text("import converter.a\n")
    assert circles(import_graph(tmp_path)) == [["converter.a", "converter.b"]]


def test_the_check_sees_a_circle_through_the_package_init(tmp_path: Path) -> None:
    (tmp_path / "__init__.py").write_text("from converter.api import run\n")
    (tmp_path / "api.py").write_text("from converter import helpers\n")
    (tmp_path / "helpers.py").write_text("from converter.api import run\n")
    assert circles(import_graph(tmp_path)) == [["converter", "converter.api", "converter.helpers"]]


def test_the_builders_and_loaders_do_not_import_conversion() -> None:
    graph = import_graph()
    for name in ("onnxbuild", "tflite", "source", "tf_source", "converted", "source_model"):
        assert f"{PACKAGE}.conversion" not in graph[f"{PACKAGE}.{name}"], name
