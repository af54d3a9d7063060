"""Issue 18 item 1, the static half: task code cannot reach storage from a param without the containment check.

Every ObjectStoragePath is made in tasks.common.storage, and no `storage_path(...)` (the unchecked constructor)
takes a value derived from `params[...]` in the same function: a param's URI goes through `storage.contained` /
`owned_output` (or a step such as nightly.incoming_path that does), whose result is already a checked path.
tests/unit/common/test_containment_dags.py is the dynamic half (an audit hook over every DAG's URI params)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

CODE = [p for top in ("tasks", "dags", "plugins") for p in sorted((REPO_ROOT / top).rglob("*.py"))]
UNCHECKED = {"storage_path", "ObjectStoragePath"}


def _name(call: ast.Call) -> str:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


def _reads_params(node: ast.AST, tainted: set[str]) -> bool:
    for sub in ast.walk(node):
        if isinstance(sub, ast.Subscript) and isinstance(sub.value, ast.Name) and sub.value.id == "params":
            return True
        if isinstance(sub, ast.Name) and sub.id in tainted:
            return True
    return False


def param_uris_reaching_storage_unchecked(source: str) -> list[str]:
    """`function:line` of every storage_path/ObjectStoragePath call fed (directly or through local names) from
    `params[...]` — assignments are followed in source order within each function."""
    found = []
    for fn in (n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)):
        tainted: set[str] = set()
        for node in sorted(ast.walk(fn), key=lambda n: (getattr(n, "lineno", 0), getattr(n, "col_offset", 0))):
            if isinstance(node, ast.Assign | ast.For) and _reads_params(
                node.value if isinstance(node, ast.Assign) else node.iter, tainted
            ):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                tainted |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
            args = [*node.args, *(k.value for k in node.keywords)] if isinstance(node, ast.Call) else []
            if args and _name(node) in UNCHECKED and any(_reads_params(arg, tainted) for arg in args):
                found.append(f"{fn.name}:{node.lineno}")
    return found


def test_only_the_storage_module_constructs_object_storage_paths() -> None:
    calls = [
        (p, n)
        for p in CODE
        if p.name != "storage.py"
        for n in ast.walk(ast.parse(p.read_text()))
        if isinstance(n, ast.Call)
    ]
    makers = [f"{p.relative_to(REPO_ROOT)}:{n.lineno}" for p, n in calls if _name(n) == "ObjectStoragePath"]
    assert makers == []


@pytest.mark.parametrize("path", CODE, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_no_param_uri_reaches_storage_without_the_containment_check(path: Path) -> None:
    assert param_uris_reaching_storage_unchecked(path.read_text()) == []


def test_the_check_catches_the_backlog_bypass_of_issue_18() -> None:
    """plan_backlog before the fix, reduced: it listed and read `incoming_uri=file:///etc/`."""
    source = (
        "def plan_backlog(settings, params):\n"
        "    for dt in days:\n"
        "        incoming_uri = params['incoming_uri'].format(dt=dt)\n"
        "        plan(storage.storage_path(incoming_uri, settings.aws_conn_id))\n"
    )
    assert param_uris_reaching_storage_unchecked(source) == ["plan_backlog:4"]
