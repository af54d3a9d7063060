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

from tasks.common.runtimes import REQUIREMENTS
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
    chosen = ["--env-file", env_file] if env_file else []  # as the README runs it: the file also picks the image
    if env_file:
        env["PIPELINE_ENV_FILE"] = env_file  # the example names the copy it asks for (aws.env); the shell wins
    result = subprocess.run(
        ["docker-compose", *chosen, "-f", "docker-compose.yaml", "config"],
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


@pytest.mark.parametrize(("env_file", "target"), [(None, "local"), ("config/compose/aws.env.example", "production")])
def test_env_file_picks_the_image_target(env_file: str | None, target: str) -> None:
    services = compose_config(env_file)["services"]
    for name in AIRFLOW_SERVICES:
        assert services[name]["build"]["target"] == target, name
        assert services[name]["image"].endswith(f"-{target}"), name


def dockerfile_stages() -> dict[str, str]:
    """`FROM … AS name` → the instructions of that stage."""
    text = (REPO_ROOT / "Dockerfile").read_text()
    parts = re.split(r"^FROM (\S+) AS (\w+)$", text, flags=re.MULTILINE)
    return {
        name: f"FROM {base}\n{body}" for base, name, body in zip(parts[1::3], parts[2::3], parts[3::3], strict=True)
    }


def test_dockerfile_targets_use_the_project_pins_and_runtimes() -> None:
    stages = dockerfile_stages()
    assert set(stages) == {"production", "local"}
    airflow_pin = re.search(r"^apache-airflow==(\S+)$", (REPO_ROOT / "constraints.txt").read_text(), re.MULTILINE)
    torch_pin = re.search(r"^TORCH := (torch==\S+)", (REPO_ROOT / "Makefile").read_text(), re.MULTILINE)
    assert airflow_pin and torch_pin
    production, local = stages["production"], stages["local"]
    assert production.startswith(f"FROM apache/airflow:{airflow_pin[1]}-python3.11\n")
    assert "-c /tmp/pip/constraints.txt -r /tmp/pip/requirements.txt" in production
    assert "torch" not in production.lower().split("copy", 1)[1], "the production image installs no torch"
    assert local.startswith("FROM production\n")
    assert torch_pin[1] in local and "https://download.pytorch.org/whl/cpu" in local
    allowed = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    for runtime, requirements in REQUIREMENTS.items():
        assert f"COPY {requirements} /tmp/pip/{runtime}.txt" in local
        assert f"!{requirements}" in allowed
    # The serving runtime as the Makefile builds it: its own constraints and excludes, and the torchvision hook.
    serving = ("local-constraints.txt", "local-excludes.txt", "torchvision_cpu_ops.py", "torchvision_cpu_ops.pth")
    for name in serving:
        assert f"include/serving/{name}" in local and f"!include/serving/{name}" in allowed, name
    assert "-c /tmp/pip/serving/local-constraints.txt --excludes /tmp/pip/serving/local-excludes.txt" in local
