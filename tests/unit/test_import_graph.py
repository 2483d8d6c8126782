"""No module of gateway/, services/ or cli/ imports one that imports it back, directly or through others.

The graph is read from the source with `ast` (nothing is imported; gen/ and generated `*_pb2*.py` are left
out). Every import statement counts wherever it stands: at module level, inside a function (a lazy import
still depends on its target) and under `if TYPE_CHECKING:` (a type a module names is part of its design,
even if it costs nothing at run time). `from pkg import name` is an edge to the submodule `pkg.name` where
there is one, else to `pkg`; relative imports are resolved against the importing module's package.

Package `__init__` files: only the edges written in the source count. Importing `a.b.c` also runs
`a/__init__.py` and `a/b/__init__.py`, but that implicit edge is not drawn (else every package that names
one of its own submodules in its `__init__` would close a circle with each of them); an `__init__.py` is a
node like any module, with the edges of its own imports.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TREES = ("gateway", "services", "cli")

Graph = dict[str, set[str]]


def project_modules(root: Path, trees: Iterable[str]) -> dict[str, Path]:
    """Dotted module name → file, for every hand-written module of the trees (a package: its __init__)."""
    modules: dict[str, Path] = {}
    for tree in trees:
        for path in sorted((root / tree).rglob("*.py")):
            relative = path.relative_to(root)
            if "gen" in relative.parts or "_pb2" in path.name:
                continue
            parts = relative.with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _known_prefix(name: str, modules: dict[str, Path]) -> str | None:
    """The longest leading part of a dotted name that is a project module (`a.b.func` → `a.b`)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if (candidate := ".".join(parts[:end])) in modules:
            return candidate
    return None


def _targets(node: ast.Import | ast.ImportFrom, package: str, modules: dict[str, Path]) -> Iterator[str]:
    """The project modules one import statement names (none for a standard or third-party import)."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            if (target := _known_prefix(alias.name, modules)) is not None:
                yield target
        return
    base = node.module or ""
    if node.level:  # `from ..x import y` in package a.b.c: a.b.x
        anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
        base = ".".join([*anchor, base] if base else anchor)
    for alias in node.names:
        submodule = f"{base}.{alias.name}"
        target = submodule if submodule in modules else _known_prefix(base, modules)
        if target is not None:
            yield target


def import_graph(root: Path = ROOT, trees: Iterable[str] = TREES) -> Graph:
    """Each project module → the other project modules it imports."""
    modules = project_modules(root, trees)
    graph: Graph = {}
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                edges.update(_targets(node, package, modules))
        graph[module] = edges - {module}
    return graph


def circles(graph: Graph) -> list[list[str]]:
    """The groups of two or more modules that all reach each other (Tarjan's strongly connected
    components), each sorted."""
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        order[node] = low[node] = len(order)
        stack.append(node)
        for successor in sorted(graph.get(node, ())):
            if successor not in order:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in stack:
                low[node] = min(low[node], order[successor])
        if low[node] == order[node]:
            group = stack[stack.index(node) :]
            del stack[stack.index(node) :]
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in order:
            visit(node)
    return groups


def shortest_circle(graph: Graph, group: list[str]) -> list[str]:
    """The shortest import circle from the group's first module back to it: [a, b, …, a]."""
    start = group[0]
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for node in frontier:
            for successor in sorted(graph[node] & set(group)):
                if successor == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [*reversed(path), start]
                if successor not in came_from:
                    came_from[successor] = node
                    following.append(successor)
        frontier = following
    raise AssertionError(f"{group} holds no circle")  # pragma: no cover - a strong component always does


def test_no_module_imports_one_that_imports_it_back() -> None:
    graph = import_graph()
    found = [" → ".join(shortest_circle(graph, group)) for group in circles(graph)]
    assert not found, "import circles (each line: who imports whom, back to the start):\n" + "\n".join(found)


def test_the_project_graph_has_its_edges() -> None:
    """An empty graph (a wrong root, a reader that finds nothing) would pass the check above."""
    graph = import_graph()
    assert {"cli.main", "gateway.app", "services.runner.core", "services.common.storage"} <= set(graph)
    assert "cli.downloads" in graph["cli.main"]
    assert "cli.supervisor" in graph["cli.stack"]
    assert not any(name.endswith("_pb2") or name.startswith("gen.") for name in graph)


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_every_kind_of_import_is_an_edge(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "import pkg.b\nimport os\n",
            "pkg/b.py": "def f():\n    from pkg import c\n",
            "pkg/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .sub.d import thing\n",
            "pkg/sub/__init__.py": "from ..a import name\n",
            "pkg/sub/d.py": "from . import e\nfrom .. import sub\nfrom pkg.a import name\n",
            "pkg/sub/e.py": "",
            "pkg/gen/x_pb2.py": "import pkg.a\n",
            "pkg/y_pb2_grpc.py": "import pkg.a\n",
        },
    )
    assert import_graph(tmp_path, ["pkg"]) == {
        "pkg": set(),
        "pkg.a": {"pkg.b"},
        "pkg.b": {"pkg.c"},
        "pkg.c": {"pkg.sub.d"},
        "pkg.sub": {"pkg.a"},
        "pkg.sub.d": {"pkg.sub.e", "pkg.sub", "pkg.a"},
        "pkg.sub.e": set(),
    }


def test_a_circle_is_found_and_shown_shortest_first() -> None:
    graph = {"a": {"b"}, "b": {"c", "a"}, "c": {"a"}, "d": {"a"}}
    assert circles(graph) == [["a", "b", "c"]]
    assert shortest_circle(graph, ["a", "b", "c"]) == ["a", "b", "a"]
    assert circles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
