"""The architecture as tests: imports go one way, and no module imports itself back.

Every import counts, module level or inside a function (a lazy import still ties the modules
together). Layers, from the bottom: model (the torch-free contract) <- training; model <-
service.core <- service.http <- service.server; service.client may use service.core, never http or server.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("model", "training", "service", "vaeserve", "harness", "benchmarks", "tests")
WEB_STACK = ("fastapi", "starlette", "uvicorn", "granian")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every module a file imports, resolved to absolute names (relative imports included)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else module_name(path)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return found


def first_party_graph() -> dict[str, set[str]]:
    files = [p for package in PACKAGES for p in (REPO / package).rglob("*.py")]
    modules = {module_name(p): p for p in files}
    return {name: {m for m in imports_of(path) if m in modules and m != name} for name, path in modules.items()}


GRAPH = first_party_graph()


def all_imports(prefix: str) -> dict[str, set[str]]:
    files = [p for p in (REPO / prefix.replace(".", "/")).rglob("*.py")]
    return {module_name(p): imports_of(p) for p in files}


def offenders(prefix: str, forbidden: tuple[str, ...]) -> list[str]:
    return sorted(f"{module} imports {imported}" for module, imported_set in all_imports(prefix).items()
                  for imported in imported_set if imported.split(".")[0] in forbidden or imported.startswith(
                      tuple(f + "." for f in forbidden if "." in f)) or imported in forbidden)


@pytest.mark.parametrize(("layer", "forbidden"), [
    # torch only where the TorchScript backend is chosen (service/core/runtime.py imports it there)
    ("service.core", (*WEB_STACK, "service.http", "service.server", "service.client", "service.cli")),
    ("service.http", ("service.server", "service.client", "service.cli", "torch")),
    ("service.client", ("fastapi", "starlette", "uvicorn", "granian", "service.http", "service.server")),
    ("model.contract", ("torch", "service", "training")),
    ("model.manifest", ("torch", "service", "training")),
    ("model.table_schema", ("torch", "service", "training")),  # the service encodes records with it
    ("model.table_files", ("torch", "service", "training")),
    ("training", ("service", "fastapi", "starlette")),
    ("benchmarks", ("tests",)),
    ("harness", ("tests",)),
])
def test_each_layer_imports_only_the_layers_below_it(layer: str, forbidden: tuple[str, ...]) -> None:
    path = REPO / layer.replace(".", "/")
    if path.with_suffix(".py").is_file():
        found = sorted(f"{layer} imports {m}" for m in imports_of(path.with_suffix(".py"))
                       if m.split(".")[0] in forbidden or m in forbidden)
    else:
        found = offenders(layer, forbidden)
    assert not found, "\n".join(found)


def test_no_module_imports_itself_back_through_others() -> None:
    """Tarjan's strongly connected components over every first-party import: each must be one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:  # iterative enough: the graph is a few hundred modules deep at most
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in GRAPH.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(GRAPH):
        if module not in index:
            visit(module)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_scan_sees_the_service_layers() -> None:
    """Guard against a scan that passes because it read nothing."""
    assert "service.core.batcher" in GRAPH and "service.http.app" in GRAPH
    assert "service.core.registry" in GRAPH["service.http.app"]
