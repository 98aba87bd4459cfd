"""The import graph of the code: no cycles, and Prefect reached from the library through one module only.

Read with ``ast`` rather than by importing, so that an import inside a function (which Python runs
late, and which can hide a cycle) counts like one at the top of a module.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

from helpers.project import REPO

# Where each top-level package lives.
PACKAGES = {"visionloop": REPO / "src" / "visionloop", "flows": REPO / "flows", "tasks": REPO / "tasks"}
ORCHESTRATION = {"prefect", "flows", "tasks"}
# The library's one way to the orchestration layer (the CLI commands that run flows).
ORCHESTRATION_GATE = "visionloop.cli.orchestration"


def modules() -> dict[str, Path]:
    """Every module of the code, by dotted name (a package by its own name)."""
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = [package, *path.relative_to(folder).with_suffix("").parts]
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


@cache
def imported_names(name: str, path: Path) -> frozenset[str]:
    """Each dotted name a module imports, anywhere in it; ``from m import x`` gives ``m`` and ``m.x``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against the module's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            names.add(source)
            names.update(f"{source}.{alias.name}" for alias in node.names)
    return frozenset(names)


def import_graph() -> dict[str, set[str]]:
    """Module → the modules of the code it imports."""
    found = modules()
    return {
        name: {target for target in imported_names(name, path) if target in found and target != name}
        for name, path in found.items()
    }


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each group of modules that import one another (Tarjan's strongly connected components)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = set()
            while (member := stack.pop()) != node:
                group.add(member)
            if group:
                groups.append(group | {node})

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [shortest_cycle(graph, group) for group in groups]


def shortest_cycle(graph: dict[str, set[str]], group: set[str]) -> list[str]:
    """The shortest path from the group's first module back to itself, within the group (breadth first)."""
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(graph[node] & group):
                if target == start:
                    return [*paths[node], start]
                if target not in paths:
                    paths[target] = [*paths[node], target]
                    following.append(target)
        frontier = following
    raise AssertionError(f"no cycle through {start} in {sorted(group)}")


def test_the_graph_sees_imports_in_functions_and_relative_ones() -> None:
    graph = import_graph()
    assert len(graph) > 50 and {"visionloop.config", "flows.training", "tasks.training"} <= graph.keys()
    assert "visionloop.params" in graph["visionloop.config"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles() -> None:
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join(" → ".join(cycle) for cycle in found)


def test_the_library_reaches_prefect_flows_and_tasks_only_through_the_orchestration_module() -> None:
    offending = {
        name: sorted(target for target in imported_names(name, path) if target.split(".")[0] in ORCHESTRATION)
        for name, path in modules().items()
        if name.split(".")[0] == "visionloop" and name != ORCHESTRATION_GATE
    }
    assert not {name: targets for name, targets in offending.items() if targets}
