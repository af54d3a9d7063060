"""The README's layout tree is the real one: a newcomer finds where a change goes from it."""

from __future__ import annotations

import re

from tests.conftest import REPO_ROOT


def readme_tasks_tree() -> list[str]:
    """The entries listed under `tasks/` in the README's layout block (two-space indented lines)."""
    block = REPO_ROOT.joinpath("README.md").read_text(encoding="utf-8").split("## Layout", 1)[1].split("```")[1]
    lines = block.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("tasks/"))
    entries = []
    for line in lines[start + 1 :]:
        match = re.match(r"^  (\S+)", line)
        if not match:
            break
        entries.append(match.group(1).rstrip("/"))
    return entries


def test_the_readme_lists_exactly_what_tasks_holds():
    present = sorted(p.name for p in (REPO_ROOT / "tasks").iterdir() if p.name != "__pycache__")
    assert sorted(readme_tasks_tree()) == present
