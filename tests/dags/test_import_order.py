"""Imports between the packages of tasks/ run one way: a package imports only those declared before it in LAYERS,
and no two packages import each other. Every import counts — at module level, inside functions and under
TYPE_CHECKING — because a lazy import is still a dependency: it only hides it from the import-time cycle check."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

from tests.conftest import REPO_ROOT

# Lowest first. Each package may import the ones before it. training comes before curation because curation asks the
# training backend for the vision geometry it prepares images for (curation/steps.py); review sits between them: it
# reads training's mislabel flags, nightly's commit queues each day into it and curation is to fold its reviewed
# labels into the next dataset. tasks/cli.py is "cli".
LAYERS = (
    "common",
    "model",
    "records",
    "costs",
    "training",
    "review",
    "curation",
    "serving",
    "nightly",
    "backlog",
    "dashboard",
    "preflight",
    "cli",
)

Edges = dict[tuple[str, str], list[str]]  # (importer, imported) -> where: "tasks/x/y.py:12"


def package_of(module: str) -> str | None:
    """`tasks.nightly.steps` → "nightly", `tasks.cli` → "cli"; None outside tasks."""
    parts = module.split(".")
    return parts[1] if parts[0] == "tasks" and len(parts) > 1 else None


def imported_modules(path: Path, tasks_root: Path) -> list[tuple[str, int]]:
    """Every module `path` imports, absolute, with its line: module level, in functions and TYPE_CHECKING blocks."""
    rel = path.relative_to(tasks_root.parent).with_suffix("").parts
    here = list(rel[:-1])  # the package that holds the module (for an __init__.py: its own)
    found: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join([*here[: len(here) - node.level + 1], *([node.module] if node.module else [])])
            module = base if node.level else node.module or ""
            # `from tasks import nightly` / `from tasks.nightly import steps` name modules too
            found += [(f"{module}.{alias.name}", node.lineno) for alias in node.names]
    return found


def package_edges(repo: Path) -> Edges:
    tasks_root = repo / "tasks"
    edges: Edges = defaultdict(list)
    for path in sorted(tasks_root.rglob("*.py")):
        source = package_of(".".join(path.relative_to(repo).with_suffix("").parts))
        for module, line in imported_modules(path, tasks_root):
            target = package_of(module)
            if target and source and target != source:
                edges[(source, target)].append(f"{path.relative_to(repo)}:{line}")
    return dict(edges)


def packages(repo: Path) -> set[str]:
    tasks_root = repo / "tasks"
    return {
        p.name if p.is_dir() else p.stem
        for p in tasks_root.iterdir()
        if (p.is_dir() and (p / "__init__.py").exists()) or (p.suffix == ".py" and p.name != "__init__.py")
    }


def upward(edges: Edges) -> list[str]:
    rank = {name: n for n, name in enumerate(LAYERS)}
    return [
        f"{source} -> {target} ({', '.join(where)})"
        for (source, target), where in sorted(edges.items())
        if rank[target] >= rank[source]
    ]


def cycles(edges: Edges) -> list[list[str]]:
    """The strongly connected groups of two or more packages (Tarjan)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for source, target in edges:
        graph[source].add(target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted({n for edge in edges for n in edge}):
        if node not in index:
            visit(node)
    return groups


def test_every_package_of_tasks_has_a_declared_layer():
    assert packages(REPO_ROOT) - set(LAYERS) == set(), "add the new package to LAYERS, above what it imports"


def test_no_package_imports_one_declared_above_it():
    edges = package_edges(REPO_ROOT)
    assert set(LAYERS) >= {n for edge in edges for n in edge}
    found = upward(edges)
    assert not found, "imports against LAYERS:\n" + "\n".join(found)


def test_no_two_packages_import_each_other():
    found = cycles(package_edges(REPO_ROOT))
    assert not found, f"packages that import each other: {found}"


def test_the_check_sees_lazy_type_checking_and_relative_imports(tmp_path):
    (tmp_path / "tasks" / "common").mkdir(parents=True)
    (tmp_path / "tasks" / "nightly").mkdir()
    for name in ("tasks", "tasks/common", "tasks/nightly"):
        (tmp_path / name / "__init__.py").write_text("")
    (tmp_path / "tasks/common/a.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from tasks.nightly import steps\n"
    )
    (tmp_path / "tasks/common/b.py").write_text("def f():\n    from ..nightly.steps import plan\n")
    (tmp_path / "tasks/nightly/steps.py").write_text("from tasks.common import a\nimport tasks.common.b\n")
    edges = package_edges(tmp_path)
    assert edges[("common", "nightly")] == ["tasks/common/a.py:3", "tasks/common/b.py:2"]
    assert edges[("nightly", "common")] == ["tasks/nightly/steps.py:1", "tasks/nightly/steps.py:2"]
    assert upward(edges) == ["common -> nightly (tasks/common/a.py:3, tasks/common/b.py:2)"]
    assert cycles(edges) == [["common", "nightly"]]
