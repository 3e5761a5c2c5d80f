"""The shape of the code, checked: no import cycles in ``sidecar/``, and a core that
owns its ports (#15).

Imports are read from the source (module level and inside functions; a block under
``if TYPE_CHECKING:`` runs only for the type checker and is left out), and importing
``a.b.c`` counts as importing the packages ``a`` and ``a.b`` too, as Python runs their
``__init__`` first.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "sidecar"

#: What core may import of the sidecar besides itself: the shared leaf modules.
CORE_MAY_USE = {"sidecar.core", "sidecar.errors", "sidecar.clock"}
#: Libraries of the adapters around core (transports, stores, metrics, config files).
ADAPTER_LIBRARIES = {"grpc", "aiohttp", "yarl", "sqlite3", "sqlite_utils", "redis",
                     "prometheus_client", "yaml", "google"}


def module_name(path: Path, top: Path = ROOT) -> str:
    """``path``'s module name, for a tree whose top package is a folder of ``top``."""
    parts = path.relative_to(top).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node but those under ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


def imports_of(path: Path, top: Path = ROOT) -> set[str]:
    """The absolute names ``path`` imports at run time (``from a import b`` gives
    ``a.b``: a submodule when there is one, else an attribute of ``a``)."""
    names: set[str] = set()
    package = module_name(path, top).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package[:len(package) - node.level + 1], *filter(None, [base])])
            names.update(f"{base}.{alias.name}" for alias in node.names)
            names.add(base)
    return names


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the modules of the same tree it makes Python import."""
    modules = {module_name(p, root.parent): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges: set[str] = set()
        for target in imports_of(path, root.parent):
            while target and target not in modules:
                target = target.rpartition(".")[0]
            while target:  # the module and every package above it
                if target in modules and target != name and not name.startswith(target + "."):
                    edges.add(target)
                target = target.rpartition(".")[0]
        graph[name] = edges
    return graph


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_sees_cycles_through_packages_and_functions(tmp_path: Path) -> None:
    tree = {
        "__init__.py": "",
        "a/__init__.py": "",
        "a/x.py": "from pkg.b.y import f\n",
        "b/__init__.py": "def g():\n    from ..a import x\n",  # in a function, relative
        "b/y.py": "def f(): ...\n",
        "c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.a.x\n",
    }
    for name, text in tree.items():
        (tmp_path / "pkg" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "pkg" / name).write_text(text)
    graph = import_graph(tmp_path / "pkg")
    assert graph["pkg.c"] == set()  # an import for the type checker only
    assert graph["pkg.a.x"] == {"pkg.b", "pkg.b.y"}  # importing b.y runs b first
    assert cycles(graph) == [["pkg.a.x", "pkg.b"]]
    (tmp_path / "pkg" / "b" / "__init__.py").write_text("")
    assert cycles(import_graph(tmp_path / "pkg")) == []


def test_no_module_of_the_sidecar_is_part_of_an_import_cycle() -> None:
    assert cycles(import_graph()) == []


def test_core_imports_no_adapter() -> None:
    found: set[tuple[str, str]] = set()
    for path in (PACKAGE / "core").rglob("*.py"):
        name = module_name(path)
        for target in imports_of(path):
            top = target.split(".")[0]
            if target.startswith("sidecar."):
                owner = ".".join(target.split(".")[:2])
                if owner not in CORE_MAY_USE:
                    found.add((name, owner))
            elif top in ADAPTER_LIBRARIES:
                found.add((name, top))
    assert found == set(), "core imports an adapter"
