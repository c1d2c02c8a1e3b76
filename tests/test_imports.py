"""The package's structure: no import cycle inside ``gateway/`` (TYPE_CHECKING imports
included: a cycle there is a cycle of concepts, whatever the interpreter allows), and
serve/ as small modules of one concept each."""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "gateway"


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, pathlib.Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: pathlib.Path, known: set[str]) -> set[str]:
    """Every module of ``known`` that ``name`` imports, wherever the import statement
    is (top level, ``if TYPE_CHECKING:``, inside a function). ``from P import x``
    counts as importing ``P.x`` when that is a module, else ``P``. The implicit import
    of a module's parent packages is not an edge (our ``__init__`` files import
    nothing from their package)."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in known else target)
    return {m for m in found if m in known and m != name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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


def test_the_walker_sees_type_checking_and_relative_imports() -> None:
    graph = _graph()
    # relative, from-import of a module, and an import under TYPE_CHECKING
    assert "gateway.serve.sockio" in graph["gateway.serve.http"]
    assert "gateway.core.state" in graph["gateway.core.hub"]
    assert "gateway.ingest.mqtt" in graph["gateway.metrics"]  # TYPE_CHECKING only
    assert "gateway" in graph["gateway.metrics"]  # `from . import __version__`


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_no_import_cycle_inside_the_package() -> None:
    cycles = _cycles(_graph())
    assert not cycles, f"modules that import each other (directly or not): {cycles}"


def test_every_serve_module_is_small_and_says_its_concept() -> None:
    """gateway/serve is a few modules of one concept each: each under 400 lines, each
    opening with a docstring whose first line alone says what it is (PEP 257: a
    summary line, then a blank line before any detail)."""
    for path in sorted((PACKAGE / "serve").glob("*.py")):
        text = path.read_text()
        lines = text.count("\n")
        # "about 400": the WebSocket session (lifecycle, limits, dispatch, timers) is
        # the largest, a little over; anything well past it is two concepts
        assert lines < 420, f"{path.name}: {lines} lines"
        doc = ast.get_docstring(ast.parse(text))
        assert doc, f"{path.name}: no module docstring"
        summary, *rest = doc.split("\n")
        assert summary.strip(), f"{path.name}: the docstring's first line is empty"
        assert not rest or not rest[0].strip(), f"{path.name}: the summary is not one line"
