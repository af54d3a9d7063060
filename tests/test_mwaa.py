"""The Amazon MWAA upload (`make mwaa`) and its check against MWAA's Airflow 3.3.1 constraints (`make mwaa-check`)."""

from __future__ import annotations

import subprocess
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT


def package(out: Path) -> Path:
    subprocess.run([str(REPO_ROOT / "bin" / "mwaa-package"), "--out", str(out)], check=True, capture_output=True)
    return out


def test_the_layout_holds_the_dags_their_code_the_plugin_and_a_requirements_file_naming_its_constraints(
    tmp_path: Path,
) -> None:
    out = package(tmp_path / "mwaa")
    dags = out / "dags"
    assert {p.name for p in dags.glob("*.py")} == {p.name for p in (REPO_ROOT / "dags").glob("*.py")}
    assert (dags / "tasks" / "common" / "settings.py").is_file() and (dags / "include" / "serving").is_dir()
    assert (dags / ".airflowignore").read_text().split() == ["tasks/", "include/", "constraints-3.3.1-llava.txt"]
    first, *rest = (out / "requirements.txt").read_text().splitlines()
    assert first == '--constraint "/usr/local/airflow/dags/constraints-3.3.1-llava.txt"'
    own = [line for line in (REPO_ROOT / "requirements.txt").read_text().splitlines() if line and line[0] != "#"]
    assert rest == own
    constraints = (dags / "constraints-3.3.1-llava.txt").read_text().splitlines()
    assert "huggingface_hub==2.4.0  # overridden: mwaa/overrides-3.3.1.txt" in constraints
    assert "huggingface_hub==1.27.0" not in constraints and "apache-airflow-providers-amazon==9.34.0" in constraints
    with zipfile.ZipFile(out / "plugins.zip") as archive:
        assert "costs_quality.py" in archive.namelist() and "templates/costs_quality.html" in archive.namelist()
    assert "PIPELINE_BACKEND=sagemaker" in (out / "startup.sh").read_text()


def test_the_same_checkout_packages_byte_identically(tmp_path: Path) -> None:
    first, second = package(tmp_path / "a"), package(tmp_path / "b")
    for name in ("plugins.zip", "requirements.txt", "dags/constraints-3.3.1-llava.txt"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def mwaa_check(requirements: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(REPO_ROOT / "bin" / "mwaa-check"), str(requirements)], capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
def test_requirements_resolve_on_mwaa_3_3_1_and_a_conflict_fails(tmp_path: Path) -> None:
    ours = mwaa_check(REPO_ROOT / "requirements.txt")
    assert ours.returncode == 0, ours.stderr[-2000:]
    if "skipped" in ours.stdout:
        pytest.skip(ours.stdout.strip())
    assert "apache-airflow==3.3.1" in ours.stdout and "datasets==5." in ours.stdout, ours.stdout
    pinned_elsewhere = tmp_path / "requirements.txt"
    pinned_elsewhere.write_text("apache-airflow==3.3.2\n")  # MWAA's essential constraints fix Airflow at 3.3.1
    conflict = mwaa_check(pinned_elsewhere)
    assert conflict.returncode == 1 and "does not resolve" in conflict.stderr, conflict.stdout + conflict.stderr
