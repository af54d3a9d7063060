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
import airflow
print(json.dumps({"airflow": airflow.__version__, "present": present, "failed": failed, "dags": sorted(bag.dags),
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


def imported_names(paths: list[Path]) -> set[str]:
    """Every top-level module an `import` statement names, at module level or inside a function."""
    names: set[str] = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name.partition(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.partition(".")[0])
    return names


def third_party_imports(paths: list[Path]) -> list[str]:
    """Every library the sources import: what the production environment must provide."""
    return sorted(imported_names(paths) - FIRST_PARTY - set(sys.stdlib_module_names) - {"__future__"})


def test_nothing_imports_a_module_python_3_12_removed() -> None:
    """MWAA runs Python 3.12, this machine 3.11: the standard modules 3.12 dropped (PEP 594, PEP 632, imp)."""
    removed = {"asynchat", "asyncore", "distutils", "imp", "smtpd"}
    sources = [*_sources(), *sorted((REPO_ROOT / "include").rglob("*.py"))]
    assert imported_names(sources) & removed == set()


def test_import_scan_sees_imports_inside_functions(tmp_path: Path) -> None:
    source = tmp_path / "lazy.py"
    source.write_text("import os\n\ndef f():\n    from torch.nn import Linear\n    import tasks.common\n")
    assert third_party_imports([source]) == ["torch"]


# MWAA's image is Python 3.12 and pins these at releases that need it; this machine has 3.11 only, so here they take
# the newest 3.11 release instead (bin/mwaa-check resolves the exact pins for 3.12).
PYTHON_312_ONLY = ("numpy==", "scipy==")


def _mwaa_constraints(folder: Path) -> list[Path]:
    """What `make mwaa` uploads: MWAA's Airflow 3.3.1 constraints with our overrides, and its essential ones."""
    subprocess.run([sys.executable, "mwaa/package.py", "--out", str(folder)], cwd=REPO_ROOT, check=True)
    constraints = folder / "dags" / "constraints-3.3.1-llava.txt"
    if sys.version_info < (3, 12):
        lines = constraints.read_text().splitlines()
        constraints.write_text("\n".join(line for line in lines if not line.startswith(PYTHON_312_ONLY)) + "\n")
    return [constraints, REPO_ROOT / "mwaa" / "essential-constraints-3.3.1.txt"]


# The Airflow this repo pins (constraints.txt: 3.3.2) and Amazon MWAA's newest image (3.3.1, amazon provider 9.34).
AIRFLOWS = {"3.3.2": lambda _: [REPO_ROOT / "constraints.txt"], "mwaa-3.3.1": _mwaa_constraints}


@pytest.fixture(scope="module", params=sorted(AIRFLOWS))
def production_python(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`.venvs/production-<airflow>-<hash>`: requirements.txt under that Airflow's constraints, the forbidden
    libraries constrained out; built once per change from the uv cache `make install` filled."""
    constraints = AIRFLOWS[request.param](tmp_path_factory.mktemp("constraints"))
    content = b"".join(path.read_bytes() for path in [REPO_ROOT / "requirements.txt", *constraints])
    key = hashlib.sha256(content + json.dumps(FORBIDDEN).encode()).hexdigest()[:12]
    root = REPO_ROOT / ".venvs"
    env_dir = root / f"production-{request.param}-{key}"
    python = env_dir / "bin" / "python"
    if (env_dir / ".installed").is_file():
        return python
    for stale in root.glob(f"production-{request.param}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    root.mkdir(exist_ok=True)
    forbid = tmp_path_factory.mktemp("forbidden") / "forbidden.txt"
    forbid.write_text("".join(f"{name}<0\n" for name in FORBIDDEN))  # no release satisfies it: never installed
    subprocess.run([str(UV), "venv", "-q", "--python", sys.executable, str(env_dir)], check=True)
    install = [str(UV), "pip", "install", "-q", "--python", str(python), "-r", "requirements.txt"]
    constrain = [arg for path in [*constraints, forbid] for arg in ("-c", str(path))]
    proc = subprocess.run([*install, *constrain], cwd=REPO_ROOT, capture_output=True, text=True)
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
    assert result["airflow"] == production_python.parent.parent.name.split("-")[-2], "built for another Airflow"
