"""The operator's imports run one way: from the entry points (runner, CLI) through the controllers, the
controller runtime and the Kubernetes client down to the domain (pure decisions and renderers) and the
core (API types, names, conditions, settings). A test reads every import of every module (those inside
functions too) and fails on an import that runs back up a layer, or on a cycle between modules."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "operator" / "modelloop"

# Lowest first. A module may import its own layer and those below it, never one above.
LAYERS: dict[str, tuple[str, ...]] = {
    "core": ("modelloop", "api", "naming", "conditions", "settings", "slim", "reasons"),
    "domain": ("training", "serving", "drift", "registry"),
    "client": ("kube", "kubeconfig"),
    "machinery": ("machinery",),
    "controllers": ("controllers",),
    "entry": ("runner", "cli"),
}
RANK = {part: rank for rank, parts in enumerate(LAYERS.values()) for part in parts}
NAMES = dict(zip(range(len(LAYERS)), LAYERS, strict=True))


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    parts = module.split(".")
    return RANK[parts[1] if len(parts) > 1 else parts[0]]


def imports_of(path: Path) -> Iterator[str]:
    """The modelloop modules ``path`` imports, at any depth of its code, except for type checking."""
    tree = ast.parse(path.read_text())
    typing_only = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and ast.unparse(block.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
        for statement in block.body
        for node in ast.walk(statement)
    }
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "modelloop":
                # from modelloop import kube: a module; from modelloop import __version__: the package.
                for alias in node.names:
                    candidate = f"modelloop.{alias.name}"
                    yield candidate if candidate.split(".")[1] in RANK else "modelloop"
            elif node.module.startswith("modelloop."):
                yield node.module
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names if alias.name.startswith("modelloop"))


def graph() -> dict[str, set[str]]:
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for target in imports_of(path):
            # `from modelloop.api import X` names the package api; a name of a module inside it counts too.
            while target not in modules and "." in target:
                target = target.rsplit(".", 1)[0]
            if target != name:
                targets.add(target)
        edges[name] = targets
    return edges


def test_every_part_of_the_package_has_a_layer() -> None:
    tops = {name.split(".")[1] for name in graph() if "." in name}
    assert tops <= set(RANK), f"give these a layer in LAYERS: {sorted(tops - set(RANK))}"


def test_no_import_runs_up_a_layer() -> None:
    upward = [
        f"{source} ({NAMES[layer_of(source)]}) imports {target} ({NAMES[layer_of(target)]})"
        for source, targets in graph().items()
        for target in sorted(targets)
        if layer_of(target) > layer_of(source)
    ]
    assert upward == []


def test_no_modules_import_each_other_in_a_cycle() -> None:
    edges = graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target)
        path.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert cycles == []


@pytest.mark.parametrize(
    ("source", "target", "upward"),
    [("modelloop.kube", "modelloop.machinery.metrics", True), ("modelloop.cli", "modelloop.kube", False)],
)
def test_the_layers_rank_as_documented(source: str, target: str, upward: bool) -> None:
    # What the test above would say of an import of the client into the runtime's metrics (the one that
    # ran back up before the client was injected), and of the CLI's use of the client.
    assert (layer_of(target) > layer_of(source)) is upward
