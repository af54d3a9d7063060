"""requirements.txt is the production Airflow environment, and it installs orchestration only (issue 20).

An environment built from requirements.txt alone, with torch, transformers, TRL, accelerate and DeepSpeed forbidden
in the resolution, imports every DAG, plugin and task module and every library they import (inside functions too),
and parses the DagBag on the sagemaker backend. Training and serving code runs in the runtimes' own environments
(tasks/common/runtimes.py) and is the only code allowed those libraries.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

FORBIDDEN = ("torch", "transformers", "trl", "accelerate", "deepspeed")
# Modules that run only inside a runtime's environment, never in Airflow's: `python -m` from the local training job.
RUNTIME_ONLY = {"tasks/model/tiny_model.py"}
FIRST_PARTY = {"tasks", "dags", "plugins", "costs_quality"}
SOURCES = ("dags", "plugins", "tasks")
UV = Path(sys.executable).with_name("uv")

_PROBE = r"""
import importlib, importlib.util, json, os, sys
modules, libraries, forbidden = json.loads(sys.argv[1])
present = [name for name in forbidden if importlib.util.find_spec(name) is not None]
failed = {}
for name in modules + libraries:
    try:
        importlib.import_module(name)
    except Exception as error:
        failed[name] = f"{type(error).__name__}: {error}"
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=os.path.join(os.getcwd(), "dags"))
print(json.dumps({"present": present, "failed": failed, "dags": sorted(bag.dags),
                  "errors": {k: str(v) for k, v in bag.import_errors.items()}}))
"""


def _sources() -> list[Path]:
    files = (path for folder in SOURCES for path in sorted((REPO_ROOT / folder).rglob("*.py")))
    return [path for path in files if path.relative_to(REPO_ROOT).as_posix() not in RUNTIME_ONLY]


def _module_name(path: Path) -> str | None:
    """The import name the Airflow components use: `tasks.…` from the repo root, plugins by file name."""
    relative = path.relative_to(REPO_ROOT)
    if relative.parts[0] == "tasks":
        return ".".join(relative.with_suffix("").parts).removesuffix(".__init__")
    if relative.parts[0] == "plugins" and len(relative.parts) == 2:
        return relative.stem
    return None  # DAG files: the DagBag imports them


def third_party_imports(paths: list[Path]) -> list[str]:
    """Every library an `import` statement names, at module level or inside a function."""
    names: set[str] = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name.partition(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.partition(".")[0])
    return sorted(names - FIRST_PARTY - set(sys.stdlib_module_names) - {"__future__"})


def test_import_scan_sees_imports_inside_functions(tmp_path: Path) -> None:
    source = tmp_path / "lazy.py"
    source.write_text("import os\n\ndef f():\n    from torch.nn import Linear\n    import tasks.common\n")
    assert third_party_imports([source]) == ["torch"]


@pytest.fixture(scope="module")
def production_python() -> Path:
    """`.venvs/production-<hash>`: requirements.txt + constraints.txt, the forbidden libraries constrained out;
    built once per requirements change from the uv cache `make install` filled."""
    requirements = (REPO_ROOT / "requirements.txt").read_bytes() + (REPO_ROOT / "constraints.txt").read_bytes()
    key = hashlib.sha256(requirements + json.dumps(FORBIDDEN).encode()).hexdigest()[:12]
    root = REPO_ROOT / ".venvs"
    env_dir = root / f"production-{key}"
    python = env_dir / "bin" / "python"
    if (env_dir / ".installed").is_file():
        return python
    for stale in root.glob("production-*"):
        shutil.rmtree(stale, ignore_errors=True)
    root.mkdir(exist_ok=True)
    forbid = root / f"forbidden-{key}.txt"
    forbid.write_text("".join(f"{name}<0\n" for name in FORBIDDEN))  # no release satisfies it: never installed
    subprocess.run([str(UV), "venv", "-q", "--python", sys.executable, str(env_dir)], check=True)
    install = [str(UV), "pip", "install", "-q", "--python", str(python), "-r", "requirements.txt"]
    proc = subprocess.run(
        [*install, "-c", "constraints.txt", "-c", str(forbid)], cwd=REPO_ROOT, capture_output=True, text=True
    )
    forbid.unlink()
    if proc.returncode != 0:
        shutil.rmtree(env_dir, ignore_errors=True)
        pytest.fail(f"requirements.txt does not install without {', '.join(FORBIDDEN)}:\n{proc.stderr[-3000:]}")
    (env_dir / ".installed").touch()
    return python


def test_the_production_environment_runs_every_dag_plugin_and_task_module(
    production_python: Path, tmp_path: Path
) -> None:
    sources = _sources()
    modules = sorted(filter(None, map(_module_name, sources)))
    libraries = third_party_imports(sources)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIPELINE_", "AIRFLOW", "VIRTUAL_ENV"))}
    env |= {
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "plugins")]),
        "AIRFLOW_HOME": str(tmp_path),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "PIPELINE_BACKEND": "sagemaker",
        "PIPELINE_STORAGE_URI": "s3://llava-pipelines-test/root",
    }
    out = subprocess.run(
        [str(production_python), "-c", _PROBE, json.dumps([modules, libraries, FORBIDDEN])],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["present"] == [], f"installed in the production environment: {result['present']}"
    assert result["failed"] == {}, f"does not import without the heavy libraries: {result['failed']}"
    assert result["errors"] == {}, result["errors"]
    assert len(result["dags"]) >= 6, result["dags"]
    assert {"airflow", "botocore", "datasets"} <= set(libraries), libraries  # the scan saw the real imports
