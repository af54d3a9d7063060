"""The Amazon MWAA upload (`make mwaa`) and its check against MWAA's Airflow 3.3.1 constraints (`make mwaa-check`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

CONSTRAINTS = "constraints-3.3.1-llava.txt"


def package(out: Path) -> Path:
    subprocess.run([str(REPO_ROOT / "bin" / "mwaa-package"), "--out", str(out)], check=True, capture_output=True)
    return out


def test_the_layout_holds_the_dags_the_plugin_with_its_code_and_a_requirements_file_naming_its_constraints(
    tmp_path: Path,
) -> None:
    out = package(tmp_path / "mwaa")
    dags = out / "dags"
    assert sorted(p.name for p in dags.iterdir()) == sorted(
        [".airflowignore", CONSTRAINTS, *(p.name for p in (REPO_ROOT / "dags").glob("*.py"))]
    )
    first, *rest = (out / "requirements.txt").read_text().splitlines()
    assert first == f'--constraint "/usr/local/airflow/dags/{CONSTRAINTS}"'
    own = [line for line in (REPO_ROOT / "requirements.txt").read_text().splitlines() if line and line[0] != "#"]
    assert rest == own
    constraints = (dags / CONSTRAINTS).read_text().splitlines()
    assert "huggingface_hub==2.4.0  # overridden: mwaa/overrides-3.3.1.txt" in constraints
    assert "huggingface_hub==1.27.0" not in constraints and "apache-airflow-providers-amazon==9.34.0" in constraints
    with zipfile.ZipFile(out / "plugins.zip") as archive:
        names = archive.namelist()
        assert archive.read(".airflowignore").decode().split() == ["tasks/", "include/"]
    assert {"costs_quality.py", "templates/costs_quality.html", "tasks/common/settings.py"} <= set(names)
    assert any(name.startswith("include/taxonomies/") for name in names)
    assert not [name for name in names if "__pycache__" in name or name.endswith(".pyc")]
    assert names == sorted(names)
    assert "PIPELINE_BACKEND=sagemaker" in (out / "startup.sh").read_text()


def test_the_same_checkout_packages_byte_identically(tmp_path: Path) -> None:
    first, second = package(tmp_path / "a"), package(tmp_path / "b")
    for name in ("plugins.zip", "requirements.txt", f"dags/{CONSTRAINTS}", "startup.sh"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


# A component of the MWAA environment, from the extracted upload alone: Airflow puts the plugins folder on sys.path in
# every process; the API server and the triggerer never parse DAGs, so they see the DAGs folder only if that does too.
_COMPONENT = r"""
import json, sys
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__module__ + getattr(f, "__name__", "")]
sys.path[:] = [p for p in sys.path if p not in ("", sys.argv[1])]  # the checkout itself is not on MWAA
import airflow
from airflow import plugins_manager, settings
from airflow.dag_processing.dagbag import DagBag
plugins, plugin_errors = plugins_manager._get_plugins()
loaded = {m for m in ("settings", "cli", "train", "launch", "steps") if m in sys.modules}  # by bare name: not wanted
# The triggerer: a deadline alert's AsyncCallback is imported by its path; the API server: the view's handlers.
import tasks.common.notifications, tasks.dashboard.view_data
from tasks.common.settings import INCLUDE_DIR
bag = DagBag(dag_folder=settings.DAGS_FOLDER)
print(json.dumps({
    "plugins": sorted(p.name for p in plugins), "plugin_errors": plugin_errors, "bare_modules": sorted(loaded),
    "tasks_from": tasks.common.notifications.__file__, "include": str(INCLUDE_DIR), "dags": sorted(bag.dag_ids),
    "dag_errors": {k: str(v)[-300:] for k, v in bag.import_errors.items()},
}))
"""


def test_every_component_imports_the_code_from_the_upload_alone(tmp_path: Path) -> None:
    out = package(tmp_path / "mwaa")
    plugins = out / "plugins"
    with zipfile.ZipFile(out / "plugins.zip") as archive:
        archive.extractall(plugins)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PIPELINE_")) and k != "PYTHONPATH"}
    env |= {
        "AIRFLOW_HOME": str(tmp_path / "home"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(out / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(plugins),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "PIPELINE_BACKEND": "sagemaker",
        "PIPELINE_STORAGE_URI": "s3://example-bucket/llava",
    }
    run = subprocess.run(
        [sys.executable, "-c", _COMPONENT, str(REPO_ROOT)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    seen = json.loads(run.stdout.splitlines()[-1])
    assert seen["plugins"] == ["costs_quality"] and seen["plugin_errors"] == {}, seen
    assert seen["bare_modules"] == [], "the plugins folder's .airflowignore must keep the loader out of tasks/"
    assert seen["tasks_from"].startswith(str(plugins)) and seen["include"] == str(plugins / "include")
    assert seen["dag_errors"] == {} and len(seen["dags"]) == len(list((REPO_ROOT / "dags").glob("*.py"))), seen


def mwaa_check(requirements: Path, *options: str) -> subprocess.CompletedProcess[str]:
    command = [str(REPO_ROOT / "bin" / "mwaa-check"), str(requirements), *(["--", *options] if options else [])]
    return subprocess.run(command, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_requirements_resolve_on_mwaa_3_3_1_and_conflicts_fail(tmp_path: Path) -> None:
    ours = mwaa_check(REPO_ROOT / "requirements.txt")
    assert ours.returncode == 0, ours.stdout[-3000:] + ours.stderr[-3000:]
    if "skipped" in ours.stdout:
        pytest.skip(ours.stdout.strip())
    assert "apache-airflow==3.3.1" in ours.stdout and "datasets==5." in ours.stdout, ours.stdout
    assert "download:" in ours.stdout and "mwaa-check: OK" in ours.stdout, ours.stdout
    pinned_elsewhere = tmp_path / "requirements.txt"
    pinned_elsewhere.write_text("apache-airflow==3.3.2\n")  # MWAA's essential constraints fix Airflow at 3.3.1
    conflict = mwaa_check(pinned_elsewhere, "--no-base")
    assert conflict.returncode == 1 and "does not resolve" in conflict.stderr, conflict.stdout + conflict.stderr
    # MWAA's own pins (huggingface_hub 1.27.0) leave pip only datasets 1.1.1: a "resolution" that is a conflict.
    pinned_elsewhere.write_text("datasets\n")
    backtracked = mwaa_check(pinned_elsewhere, "--no-base", "--strict")
    assert backtracked.returncode == 1 and "datasets resolves to 1." in backtracked.stderr, backtracked.stderr
