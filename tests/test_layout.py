"""The package's shape: imports point one way (the CLI on top, nothing below importing it),
no import cycle (module level or inside functions), and modules and functions small enough
to read. Walks the source with `ast`, so it sees lazy imports too."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "dfer_cli"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60   # a function's body, without its signature and docstring


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(name: str, path: Path) -> set[str]:
    """The dfer_cli modules `name` imports anywhere in its source (a `from pkg import sub`
    of a sub-module counts as importing the sub-module)."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for a in node.names:
                sub = f"{module}.{a.name}"
                found.add(sub if sub in MODULES else module)
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: imported_modules(name, path) for name, path in MODULES.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
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


def function_lengths(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if len(body) > 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                body = body[1:]  # the docstring
            yield node.name, node.lineno, node.end_lineno - body[0].lineno + 1


def test_the_walk_sees_module_level_and_lazy_imports():
    assert "dfer_cli.pipeline" in GRAPH["dfer_cli.predict"]                  # module level
    assert "dfer_cli.cli.corpus" in GRAPH["dfer_cli.cli.predict"]            # inside a function
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_nothing_outside_the_cli_imports_it():
    cli = {m for m in MODULES if m == "dfer_cli.cli" or m.startswith("dfer_cli.cli.")}
    outside = {m: sorted(GRAPH[m] & cli) for m in MODULES if m not in cli and m != "dfer_cli.__main__"}
    assert {m: deps for m, deps in outside.items() if deps} == {}


def test_no_import_cycles():
    assert cycles(GRAPH) == []


def test_modules_stay_small():
    sizes = {name: len(path.read_text().splitlines()) for name, path in MODULES.items()}
    assert {n: s for n, s in sizes.items() if s > MAX_MODULE_LINES} == {}


def test_functions_stay_short():
    long = [f"{module_name(p)}.{fn} (line {line}): {n} lines"
            for p in MODULES.values() for fn, line, n in function_lengths(p) if n > MAX_FUNCTION_LINES]
    assert long == []


@pytest.mark.parametrize("package", ["video", "faces", "pipeline", "models", "data", "train", "evaluation",
                                     "corpus", "cli"])
def test_each_concern_is_a_documented_sub_package(package):
    init = PACKAGE / package / "__init__.py"
    assert init.is_file() and ast.get_docstring(ast.parse(init.read_text()))
