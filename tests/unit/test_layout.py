"""The package's layout holds (docs/architecture.md draws it): transports call the engine,
never the reverse; observability depends on neither; no two modules import each other,
directly or round a longer circle; no module over 400 lines (generated stubs aside)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[2] / "modelserve"
SERVER = "modelserve.server"


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports() -> dict[str, set[str]]:
    """Each module's imports of the package's own modules (function-level ones included)."""
    mods = modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
        graph[name] = {t for t in targets if t in mods and t != name}
    return graph


def stage(module: str) -> str | None:
    prefix = SERVER + "."
    return module[len(prefix):].split(".")[0] if module.startswith(prefix) else None


def test_engine_and_observability_import_no_transport():
    allowed = {"engine": {"engine", "observability", None},
               "observability": {"observability", None}}
    wrong = [(m, t) for m, targets in imports().items() for t in targets
             if stage(m) in allowed and stage(t) not in allowed[stage(m)]]
    assert wrong == []


def test_no_import_cycles():
    graph = imports()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            if component:
                cycles.append([v, *component])

    for v in graph:
        if v not in index:
            visit(v)
    assert cycles == []


def test_no_module_over_400_lines():
    long = {str(p.relative_to(PACKAGE.parent)): n for p in PACKAGE.rglob("*.py")
            if not p.name.endswith(("_pb2.py", "_pb2_grpc.py"))
            and (n := len(p.read_text().splitlines())) > 400}
    assert long == {}
