"""The package graph of ``service/``: no import cycles between its packages, and the layers point one way.

Every module is parsed (nothing is imported), each ``import service.x...`` / ``from service.x... import`` is an
edge from the importing module's package to ``service.x``, wherever it stands (at the top, in a function, under
``TYPE_CHECKING``). A package is a directory under ``service/`` (``redemption``, ``web``, ...) or a top-level
module (``config``, ``series``, ``app``, ...).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Final

import pytest

import service

ROOT: Final = Path(service.__file__).parent

#: What the domain may never import: adapters, I/O, the web and the wiring.
ADAPTERS: Final = frozenset(
    {"capillary", "idempotency", "web", "app", "sandbox", "client", "offline", "backoffice", "redis_pool", "cache"}
    | {"series", "observability", "upstream_auth", "__main__"}
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports(path: Path, module: str) -> Iterator[str]:
    """Every ``service.*`` module named by an import in ``path``, relative imports resolved."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if path.name == "__init__.py" else 0)]
                yield ".".join([*base, node.module] if node.module else base)
            elif node.module is not None:
                yield node.module


def module_imports() -> dict[str, set[str]]:
    """Each module of ``service/`` and the ``service.*`` modules it imports."""
    found: dict[str, set[str]] = {}
    for path in sorted(ROOT.rglob("*.py")):
        module = _module_name(path)
        found[module] = {name for name in _imports(path, module) if name.startswith("service.")}
    return found


def package_graph(imports: Mapping[str, set[str]]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for module, names in imports.items():
        source = _package(module)
        for name in names:
            target = _package(name)
            if target and target != source:
                graph[source].add(target)
    return dict(graph)


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one package (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _without(graph: Mapping[str, set[str]], edges: frozenset[tuple[str, str]]) -> dict[str, set[str]]:
    return {source: {t for t in targets if (source, t) not in edges} for source, targets in graph.items()}


@pytest.fixture(scope="module")
def imports() -> dict[str, set[str]]:
    return module_imports()


def test_no_package_is_in_an_import_cycle(imports: dict[str, set[str]]) -> None:
    assert cycles(package_graph(imports)) == []


def test_the_domain_imports_no_adapter(imports: dict[str, set[str]]) -> None:
    leaks = {
        module: sorted(name for name in names if _package(name) in ADAPTERS)
        for module, names in imports.items()
        if _package(module) == "redemption"
    }
    assert {module: names for module, names in leaks.items() if names} == {}


def test_web_modules_import_nothing_of_capillary(imports: dict[str, set[str]]) -> None:
    leaks = {
        module
        for module, names in imports.items()
        if _package(module) == "web" and any(_package(name) == "capillary" for name in names)
    }
    assert leaks == set()


def test_observability_does_not_import_the_web_layer(imports: dict[str, set[str]]) -> None:
    assert {m for m, names in imports.items() if _package(m) == "observability" and "web" in map(_package, names)} == (
        set()
    )


# The checker itself, on plain graphs: a check that could never fail would prove nothing.


def test_cycles_finds_a_cycle_and_only_it() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles(_without(graph, frozenset({("c", "a")}))) == []


def test_package_graph_joins_modules_into_their_packages() -> None:
    imports = {
        "service.web.redemptions": {"service.web.errors", "service.redemption.flow"},
        "service.redemption.flow": {"service.redemption.models"},
        "service.app": {"service.web.redemptions", "service.config"},
    }
    assert package_graph(imports) == {"web": {"redemption"}, "app": {"web", "config"}}
