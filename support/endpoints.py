"""What classification tests share: a deployed local endpoint as deploy_endpoint records it, and committed rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tasks.common import storage
from tasks.common.settings import Settings
from tasks.model.taxonomy import load_taxonomy
from tasks.model.vision_tokens import TINY_GEOMETRY
from tasks.nightly import predictions
from tasks.records.endpoint import EndpointRecord
from tasks.serving import deployment
from tasks.serving.local import state_path
from tasks.serving.local_server import start_local_server

# The columns a rerun must reproduce (latency and attempts vary from run to run).
STABLE = ["key", "content_sha256", "source_size", "source_version", "status", "label", "raw_answer", "model_version"]


def endpoint_record(
    url: str,
    *,
    model_version: str = "v1",
    model_uri: str = "file:///unused",
    max_image_tokens: int | None = 1200,
    supports_choice: bool = False,
) -> EndpointRecord:
    """A local endpoint record as deploy_endpoint writes it (`supports_choice` as the local vLLM does; test servers
    that do not apply a label constraint leave it False)."""
    return EndpointRecord(
        backend="local",
        endpoint_name="llava-classifier",
        transport="openai_http",
        url=url,
        model_version=model_version,
        model=model_uri,
        taxonomy="digits",
        prompt=load_taxonomy("digits").prompt(),
        instance_type="local",
        instance_count=1,
        price_region="local",
        supports_choice=supports_choice,
        max_image_tokens=max_image_tokens,
        vision_geometry=TINY_GEOMETRY,
        config_name=None,
        deployed_at="2026-11-01T00:00:00+00:00",
    )


def deploy_locally(settings: Settings, model: Path, model_version: str) -> EndpointRecord:
    """What deploy_endpoint leaves behind on the local backend: a running server and its endpoint record."""
    server = start_local_server(model, state_path(settings))
    record = endpoint_record(
        server.base_url, model_version=model_version, model_uri=model.as_uri(), supports_choice=True
    )
    deployment.publish_record(deployment.serving_root(settings), record)
    return record


def committed(storage_root: Path, day: str) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The `_SUCCESS` manifest of dt=day and its rows sorted by key."""
    partition = predictions.partition_dir(storage.storage_path(f"file://{storage_root}/predictions"), day)
    return predictions.read_success(partition), predictions.read_partition(partition).sort_by("key").to_pylist()


def stable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: row[k] for k in STABLE} for row in rows]
