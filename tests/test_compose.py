"""docker-compose.yaml is valid and wires the production-shaped stack the way the local one is wired.

Validated with Debian's `docker-compose` (v1.29, installed by bin/test-setup), which needs no Docker engine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from tasks.common.settings import load_settings

REPO_ROOT = Path(__file__).resolve().parent.parent
AIRFLOW_SERVICES = {
    "airflow-apiserver": "api-server",
    "airflow-scheduler": "scheduler",
    "airflow-dag-processor": "dag-processor",
    "airflow-triggerer": "triggerer",
    "airflow-worker": "celery worker",
}
MOUNTED = ("dags", "plugins", "include", "tasks", "config")


@cache
def compose_config(env_file: str | None = None) -> dict[str, Any]:
    """`docker-compose config`: the file validated against the Compose schema, interpolated and merged."""
    if shutil.which("docker-compose") is None:
        pytest.fail("docker-compose is not installed: run bin/test-setup")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIPELINE_", "AIRFLOW"))}
    if env_file:
        env["PIPELINE_ENV_FILE"] = env_file
    result = subprocess.run(
        ["docker-compose", "-f", "docker-compose.yaml", "config"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_runs_the_seven_services_with_their_commands() -> None:
    services = compose_config()["services"]
    assert set(services) == {*AIRFLOW_SERVICES, "postgres", "redis"}
    for name, command in AIRFLOW_SERVICES.items():
        if name != "airflow-apiserver":
            assert services[name]["command"] == command
    bootstrap = services["airflow-apiserver"]["command"]
    assert bootstrap[:2] == ["bash", "-c"] and bootstrap[2].startswith("airflow db migrate")
    assert bootstrap[2].endswith("&& exec airflow api-server")
    for imported in re.findall(r"/opt/airflow/(config/airflow/\S+\.json)", bootstrap[2]):
        assert (REPO_ROOT / imported).is_file(), imported


def test_airflow_services_share_image_settings_and_code() -> None:
    services = compose_config()["services"]
    airflow = [services[name] for name in AIRFLOW_SERVICES]
    assert {s["image"] for s in airflow} == {airflow[0]["image"]}
    assert all(s["build"]["context"] == str(REPO_ROOT) for s in airflow)
    secrets = set()
    for service in airflow:
        env = service["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
        assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://redis:")
        assert "@postgres/" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"
        assert env["PYTHONPATH"] == "/opt/airflow"
        secrets.add((env["AIRFLOW__API_AUTH__JWT_SECRET"], env["AIRFLOW__API__SECRET_KEY"]))
        mounts = {v.split(":")[1]: v.split(":")[0] for v in service["volumes"]}
        for folder in MOUNTED:
            assert mounts[f"/opt/airflow/{folder}"] == str(REPO_ROOT / folder)
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert len(secrets) == 1, "every component must sign and verify tokens with the same secrets"
    assert "8080" in services["airflow-apiserver"]["ports"][0]


@pytest.mark.parametrize(
    ("env_file", "backend", "storage_scheme"),
    [(None, "local", "file"), ("config/compose/aws.env.example", "sagemaker", "s3")],
)
def test_env_file_selects_the_backend(env_file: str | None, backend: str, storage_scheme: str) -> None:
    env = compose_config(env_file)["services"]["airflow-worker"]["environment"]
    settings = load_settings({k: str(v) for k, v in env.items()})
    assert settings.backend == backend
    assert settings.storage_uri.startswith(f"{storage_scheme}://")
    if backend == "sagemaker":
        assert settings.sagemaker_role_arn.startswith("arn:aws:iam::")
        assert json.loads(env["AIRFLOW_CONN_AWS_DEFAULT"])["conn_type"] == "aws"


def test_dockerfile_uses_the_project_pins() -> None:
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    airflow_pin = re.search(r"apache-airflow\[[^\]]*\]==(\S+)", (REPO_ROOT / "requirements.txt").read_text())
    torch_pin = re.search(r"^TORCH := (torch==\S+)", (REPO_ROOT / "Makefile").read_text(), re.MULTILINE)
    assert airflow_pin and torch_pin
    assert re.search(rf"^FROM apache/airflow:{re.escape(airflow_pin[1])}-python3\.11$", dockerfile, re.MULTILINE)
    assert f"pip install --no-cache-dir {torch_pin[1]} --index-url https://download.pytorch.org/whl/cpu" in dockerfile
    assert "-c /tmp/pip/constraints.txt -r /tmp/pip/requirements.txt" in dockerfile
