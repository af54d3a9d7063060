"""Run DAGs for real through `bin/airflow dags test`, on local storage or on S3 emulated by moto_server."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from airflow.sdk.io import store as object_store

from tests.conftest import REPO_ROOT
from tests.e2e.processes import free_port
from tests.moto_documented import FAILURE_TOGGLES

BIN_AIRFLOW = REPO_ROOT / "bin" / "airflow"


@dataclass
class DagRunResult:
    returncode: int
    output: str
    states: dict[str, str] = field(default_factory=dict)  # task_id[map index] -> state

    @property
    def succeeded(self) -> bool:
        return self.returncode == 0 and "state=success, run_type" in self.output

    def xcom(self, task_id: str) -> str | None:
        m = re.search(rf"task_id={task_id}\b.*?Returned value was: (.*?) \[airflow", self.output, re.S)
        return m.group(1) if m else None


@dataclass
class AirflowRunner:
    """`bin/airflow` with an isolated AIRFLOW_HOME and PIPELINE_* settings."""

    env: dict[str, str]

    def dags_test(
        self, dag_id: str, conf: dict | None = None, logical_date: str | None = None, timeout: float = 600
    ) -> DagRunResult:
        cmd = [str(BIN_AIRFLOW), "dags", "test", dag_id]
        if logical_date:
            cmd.append(logical_date)
        if conf:
            cmd += ["--conf", json.dumps(conf)]
        proc = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT)
        return DagRunResult(proc.returncode, proc.stdout + proc.stderr)

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN_AIRFLOW), *args], env=self.env, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT
        )


def _runner(home: Path, storage_uri: str, **extra: str) -> AirflowRunner:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PIPELINE_"))}
    env.update(AIRFLOW_HOME=str(home), PIPELINE_STORAGE_URI=storage_uri, **extra)
    return AirflowRunner(env)


@pytest.fixture(scope="session")
def local_airflow(tmp_path_factory: pytest.TempPathFactory) -> AirflowRunner:
    """Local backend, file:// storage, SQLite: the laptop setup."""
    root = tmp_path_factory.mktemp("local-airflow")
    return _runner(root / "airflow", (root / "storage").as_uri(), PIPELINE_BACKEND="local")


@dataclass(frozen=True)
class Moto:
    endpoint: str
    bucket: str = "pipeline-bucket"

    def reset(self) -> None:
        urllib.request.urlopen(urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST")).read()

    def boto3_client(self, service: str):
        import boto3

        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    @property
    def conn_json(self) -> str:
        return json.dumps(
            {
                "conn_type": "aws",
                "login": "testing",
                "password": "testing",
                "extra": {"region_name": "us-east-1", "endpoint_url": self.endpoint},
            }
        )


MOTO_READY_DEADLINE_S = 120.0


def start_moto(tmp_path_factory: pytest.TempPathFactory, program: list[str], **env: str) -> Iterator[Moto]:
    """Run a moto server program (`moto_server`, or tests.moto_documented) on a free loopback port until the end."""
    port = free_port()
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("w")
    argv = [*program, "-H", "127.0.0.1", "-p", str(port)]
    proc = subprocess.Popen(argv, stdout=log, stderr=log, cwd=REPO_ROOT, env={**os.environ, **env})
    moto = Moto(f"http://127.0.0.1:{port}")
    # Until it answers a reset (fails at once if it exits): ~2 s on 2 idle cores (importing moto's services); 120 s
    # leaves a saturated machine room many times over.
    deadline = time.monotonic() + MOTO_READY_DEADLINE_S
    while True:
        try:
            moto.reset()
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                code = proc.poll()
                why = f"exited with {code}" if code is not None else f"{MOTO_READY_DEADLINE_S:.0f}s passed"
                proc.kill()
                raise RuntimeError(f"moto_server did not start ({why}; MOTO_READY_DEADLINE_S)") from None
            time.sleep(0.2)
    yield moto
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="session")
def aws_failures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The files whose presence makes moto_server fail as AWS documents (tests.moto_documented), by variable."""
    folder = tmp_path_factory.mktemp("aws-failures")
    return {env: folder / f"{env.lower()}.txt" for env in FAILURE_TOGGLES}


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory, aws_failures: dict[str, Path]) -> Iterator[Moto]:
    """A real moto_server on loopback (S3 and SageMaker APIs, no AWS account), plus the SageMaker behaviour AWS
    documents and moto does not model (tests.moto_documented)."""
    toggles = {env: str(path) for env, path in aws_failures.items()}
    yield from start_moto(tmp_path_factory, [sys.executable, "-m", "tests.moto_documented"], **toggles)


@pytest.fixture
def moto(moto_server: Moto, aws_failures: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> Moto:
    """A clean moto with the bucket created, no failure switched on, and this process's aws_default connection
    pointed at it."""
    moto_server.reset()
    for path in aws_failures.values():
        path.unlink(missing_ok=True)
    moto_server.boto3_client("s3").create_bucket(Bucket=moto_server.bucket)
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", moto_server.conn_json)
    # ObjectStoragePath keeps one filesystem per connection for the process (airflow.sdk.io.store._STORE_CACHE): one
    # an earlier test attached for aws_default (real AWS) would otherwise answer here. Restored after the test.
    monkeypatch.setattr(object_store, "_STORE_CACHE", {})
    return moto_server


@pytest.fixture(scope="session")
def sagemaker_airflow(tmp_path_factory: pytest.TempPathFactory, moto_server: Moto) -> AirflowRunner:
    """SageMaker backend, s3:// storage, both served by moto_server."""
    root = tmp_path_factory.mktemp("sagemaker-airflow")
    return _runner(
        root / "airflow",
        f"s3://{moto_server.bucket}/pipeline",
        PIPELINE_BACKEND="sagemaker",
        PIPELINE_SAGEMAKER_ROLE_ARN="arn:aws:iam::123456789012:role/SageMakerExecution",
        AIRFLOW_CONN_AWS_DEFAULT=moto_server.conn_json,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
    )
