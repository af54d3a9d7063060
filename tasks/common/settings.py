"""`PIPELINE_*` environment variables → one typed settings object.

The backend is a property of a deployment: read once at DAG parse time. `Settings.by_backend` is the one place
that branches on it; each pipeline hands it its `local` and `sagemaker` implementations.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

REPO_ROOT = Path(__file__).resolve().parents[2]
INCLUDE_DIR = REPO_ROOT / "include"

Backend = Literal["local", "sagemaker"]
BACKENDS: tuple[Backend, ...] = ("local", "sagemaker")
T = TypeVar("T")


@dataclass(frozen=True)
class Settings:
    backend: Backend
    storage_uri: str
    aws_conn_id: str
    region: str
    sagemaker_role_arn: str
    taxonomy: str
    alert_sns_topic_arn: str = ""  # empty: alerts go to the log and $AIRFLOW_HOME/alerts/failures.jsonl
    input_roots: tuple[str, ...] = ()  # read-only URIs outside the storage root that params may name (a raw drop)
    kms_key_arns: tuple[str, ...] = ()  # KMS keys of SSE-KMS buckets and an encrypted SNS topic (IAM policies)

    def by_backend(self, *, local: Callable[[], T], sagemaker: Callable[[], T]) -> T:
        """The implementation for this deployment's backend; the factories import lazily, so a local deployment
        never imports SageMaker's operators and vice versa."""
        return {"local": local, "sagemaker": sagemaker}[self.backend]()

    @property
    def requires_pager(self) -> bool:
        """Production failures must reach a person: without an SNS topic the alert notifier warns at parse time."""
        return self.backend != "local"


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read settings from the environment, with the local backend as the default."""
    env = os.environ if env is None else env
    backend = env.get("PIPELINE_BACKEND", "local").strip().lower()
    if backend not in BACKENDS:
        raise ValueError(f"PIPELINE_BACKEND must be one of {BACKENDS}, got {backend!r}")
    storage = env.get("PIPELINE_STORAGE_URI", "").strip() or (REPO_ROOT / ".data").as_uri()
    if "://" not in storage:  # a plain path: make it absolute, relative to the repo
        storage = (REPO_ROOT / storage).resolve().as_uri()
    return Settings(
        backend=backend,  # type: ignore[arg-type]
        storage_uri=storage.rstrip("/"),
        aws_conn_id=env.get("PIPELINE_AWS_CONN_ID", "aws_default"),
        region=env.get("PIPELINE_REGION", "us-east-1"),
        sagemaker_role_arn=env.get("PIPELINE_SAGEMAKER_ROLE_ARN", ""),
        taxonomy=env.get("PIPELINE_TAXONOMY", "digits" if backend == "local" else "hotel"),
        alert_sns_topic_arn=env.get("PIPELINE_ALERT_SNS_TOPIC_ARN", "").strip(),
        input_roots=_input_roots(env.get("PIPELINE_INPUT_ROOTS", "")),
        kms_key_arns=tuple(k.strip() for k in env.get("PIPELINE_KMS_KEY_ARNS", "").split(",") if k.strip()),
    )


def _input_roots(value: str) -> tuple[str, ...]:
    """Comma-separated URIs; each must have a scheme (a bare path would silently mean the current directory)."""
    roots = tuple(part.strip().rstrip("/") for part in value.split(",") if part.strip())
    for uri in roots:
        if "://" not in uri:
            raise ValueError(f"PIPELINE_INPUT_ROOTS entries must be URIs (file:// or s3://), got {uri!r}")
    return roots
