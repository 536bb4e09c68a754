"""The import graph: the worker imports only the wire contract from producer/, the wire imports neither
side nor a server library, and no module of ours is part of an import cycle (``TYPE_CHECKING`` imports
count: a cycle of meaning is still a cycle)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("producer", "worker")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Every module ``name`` imports, resolved to our modules where it names one (anywhere in the file)."""
    package = name if is_package(path) else name.rpartition(".")[0]
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
            found.add(target)
            for alias in node.names:  # ``from pkg import submodule``
                if f"{target}.{alias.name}" in known:
                    found.add(f"{target}.{alias.name}")
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {
        name: {m for m in imports_of(name, path, known) if m in known and m != name} for name, path in known.items()
    }


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
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
        for w in edges[v]:
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

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_worker_imports_only_the_wire_contract_from_producer():
    known = modules()
    offending = {}
    for name, path in known.items():
        if not name.startswith("worker"):
            continue
        bad = {
            m
            for m in imports_of(name, path, known)
            if m.split(".")[0] == "producer" and not (m == "producer.wire" or m.startswith("producer.wire."))
        }
        if bad:
            offending[name] = sorted(bad)
    assert offending == {}


def test_the_wire_imports_no_server_library_and_nothing_else_of_producer():
    known = modules()
    for name, path in known.items():
        if not name.startswith("producer.wire"):
            continue
        for imported in imports_of(name, path, known):
            top = imported.split(".")[0]
            assert top not in ("redis", "rq", "torch", "PIL", "worker", "numpy"), (name, imported)
            if top == "producer":
                assert imported.startswith("producer.wire"), (name, imported)


def test_no_module_of_ours_is_in_an_import_cycle():
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_importing_the_wire_loads_neither_redis_nor_rq_nor_the_client():
    code = (
        "import sys, producer.wire.cache, producer.wire.feed, producer.wire.jobs, producer.wire.keys, "
        "producer.wire.results, producer.wire.serializer; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('redis', 'rq', 'torch', 'PIL') "
        "or m in ('producer.client', 'producer.aio', 'producer.feed')))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
