"""The import graph of edged/: no cycles (module- or function-level), and the map held.

The map (README, "Layout"): imports run downward, cli -> commands -> daemon -> worker ->
tasks -> engine -> models.manifest; spool and worker -> store; everything may read config.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "edged"

# Who may not import whom (dotted prefixes). "models.manifest" is the engine's one way into models/.
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "edged.engine": ("edged.tasks", "edged.store", "edged.spool", "edged.worker", "edged.daemon", "edged.intake",
                     "edged.settle", "edged.cli", "edged.commands", "edged.wiring", "edged.models.export",
                     "edged.models.graphs", "edged.models.quantize", "edged.models.verify", "edged.models.default",
                     "edged.models.importer", "edged.models.gguf", "edged.models.parity", "edged.models.fused"),
    "edged.store": ("edged.tasks", "edged.engine", "edged.spool", "edged.models", "edged.worker", "edged.daemon",
                    "edged.intake", "edged.settle", "edged.cli", "edged.commands", "edged.wiring"),
    "edged.models": ("edged.engine", "edged.store", "edged.spool", "edged.tasks", "edged.worker", "edged.daemon",
                     "edged.cli", "edged.commands", "edged.wiring"),
    "edged.spool": ("edged.engine", "edged.tasks", "edged.models", "edged.worker", "edged.daemon", "edged.intake",
                    "edged.settle", "edged.cli", "edged.commands", "edged.wiring"),
    "edged.tasks": ("edged.store", "edged.spool", "edged.models", "edged.worker", "edged.daemon", "edged.intake",
                    "edged.settle", "edged.cli", "edged.commands", "edged.wiring"),
    "edged.commands": ("edged.cli",),
    "edged.config": ("edged.store", "edged.spool", "edged.engine", "edged.tasks", "edged.models", "edged.worker",
                     "edged.daemon", "edged.metrics", "edged.cli", "edged.commands", "edged.wiring"),
    "edged.worker": ("edged.daemon", "edged.cli", "edged.commands", "edged.wiring"),
    "edged.daemon": ("edged.cli", "edged.commands"),
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def _graph() -> dict[str, set[str]]:
    """Every edged module -> the edged modules it imports, wherever the import statement sits."""
    modules = _modules()

    def resolve(name: str) -> str:
        while name not in modules and "." in name:
            name = name.rsplit(".", 1)[0]
        return name if name in modules else ""

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("edged"):
                for alias in node.names:
                    deps.add(resolve(f"{node.module}.{alias.name}"))
            elif isinstance(node, ast.Import):
                deps.update(resolve(a.name) for a in node.names if a.name.startswith("edged"))
        deps.discard(name)
        deps.discard("")
        graph[name] = deps
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
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
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles_anywhere_in_edged() -> None:
    assert _cycles(_graph()) == []


def test_imports_keep_to_the_map() -> None:
    against = []
    for module, deps in sorted(_graph().items()):
        for prefix, banned in FORBIDDEN.items():
            if module == prefix or module.startswith(prefix + "."):
                against += [f"{module} imports {d}" for d in sorted(deps)
                            if any(d == b or d.startswith(b + ".") for b in banned)]
    assert against == []


def test_the_checker_sees_function_level_imports_and_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert "edged.engine.api" in _graph()["edged.engine.onnx"]
