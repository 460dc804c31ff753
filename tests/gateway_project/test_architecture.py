"""The architecture contract (docs/architecture.md), read off the import graph with grimp.

- No import circle runs through files of two different apps.
- The lower layer (gateway_project/lib) imports no app, and nothing of the
  composition root.
- Domain apps import each other only along their foreign keys
  (tenants <- keys, tenants <- providers, keys and providers <- usage) and
  never routing or the composition root; routing imports no composition root.
- No module imports another module's private (_underscored) name.

Deferred imports count as imports here: a function-level import is still an edge.
"""

import ast

import grimp
import pytest

from tests.conftest import ROOT

PACKAGES = ("gateway_project", "tenants", "keys", "providers", "usage", "routing")
# Who may import whom, by layer: the composition root everything; routing the domain apps; each
# domain app those it points at by foreign key; every app the lower layer; the lower layer nothing.
ALLOWED = {
    "root": {"root", "lib", "routing", "tenants", "keys", "providers", "usage"},
    "routing": {"routing", "lib", "tenants", "keys", "providers", "usage"},
    "usage": {"usage", "lib", "tenants", "keys", "providers"},
    "keys": {"keys", "lib", "tenants"},
    "providers": {"providers", "lib", "tenants"},
    "tenants": {"tenants", "lib"},
    "lib": {"lib"},
}


def layer(module: str) -> str:
    if module.startswith("gateway_project.lib"):
        return "lib"
    top = module.split(".")[0]
    return "root" if top == "gateway_project" else top


@pytest.fixture(scope="module")
def graph():
    return grimp.build_graph(*PACKAGES, include_external_packages=False, cache_dir=None)


def _code_modules(graph) -> set[str]:
    return {m for m in graph.modules if ".migrations" not in m}


def _edges(graph):
    modules = _code_modules(graph)
    for importer in sorted(modules):
        for imported in graph.find_modules_directly_imported_by(importer):
            if imported in modules:
                yield importer, imported


def test_layers_import_only_downwards(graph):
    wrong = [f"{a} -> {b}" for a, b in _edges(graph) if layer(b) not in ALLOWED[layer(a)]]
    assert wrong == [], "imports against the layers:\n" + "\n".join(wrong)


def test_no_import_circle_across_apps(graph):
    """Strongly connected components of the module graph (Tarjan), each within one app."""
    edges: dict[str, list[str]] = {}
    for a, b in _edges(graph):
        edges.setdefault(a, []).append(b)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
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
            if len({layer(m) for m in component}) > 1:
                circles.append(sorted(component))

    for module in sorted(_code_modules(graph)):
        if module not in index:
            visit(module)
    assert circles == [], f"import circles across apps: {circles}"


def _private_imports() -> list[str]:
    found = []
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if "migrations" in path.parts:
                continue
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom):
                    for alias in node.names:
                        if alias.name.startswith("_") and not alias.name.startswith("__"):
                            found.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {alias.name}")
                elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                    # `module._name` on an imported module (Django's documented Model._meta aside)
                    if node.attr.startswith("_") and not node.attr.startswith("__") and \
                            node.attr != "_meta" and node.value.id in _imported_modules(tree):
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno} uses {node.value.id}.{node.attr}")
    return found


def _imported_modules(tree: ast.Module) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and \
                node.module.split(".")[0] in PACKAGES:
            names.update(a.asname or a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            names.update(a.asname or a.name for a in node.names)
    return names - {"self", "cls"}


def test_no_private_name_imported_from_another_module():
    found = _private_imports()
    assert found == [], "private names used across modules:\n" + "\n".join(found)


def test_the_contract_can_fail(graph):
    """The checks above see real edges: the composition root imports the apps, and a lower
    module importing upwards would be caught (the graph is not empty by mistake)."""
    edges = set(_edges(graph))
    assert ("gateway_project.asgi", "routing.front.handler") in edges
    assert layer("gateway_project.lib.errors") == "lib" and "routing" not in ALLOWED["lib"]
