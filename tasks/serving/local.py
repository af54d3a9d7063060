"""The local side of deploy/teardown: one managed `transformers serve` on loopback per storage root.

The server's pid/port state file must sit on the disk of the machine that runs the process: under the storage root
when that is `file://`, else (local backend against `s3://` storage) under `$AIRFLOW_HOME/serving/`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from tasks.common.settings import Settings
from tasks.common.storage import SERVING
from tasks.serving.local_server import local_server_status, start_local_server, stop_local_server

STATE_NAME = "local_server.json"


def state_path(settings: Settings) -> Path:
    if settings.storage_uri.startswith("file://"):
        return Path(urlparse(settings.storage_uri).path) / SERVING / STATE_NAME
    home = os.environ.get("AIRFLOW_HOME") or Path.home() / "airflow"
    return Path(home) / SERVING / STATE_NAME


def model_dir(model_uri: str) -> Path:
    """The local directory of a registered model (the local backend serves from disk, never from S3)."""
    parsed = urlparse(model_uri)
    if parsed.scheme not in ("", "file"):
        raise ValueError(f"the local backend serves models from local disk; {model_uri!r} is not a file:// URI")
    return Path(parsed.path).resolve()


def plan(base: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Add the local facts to a base plan; the model served now is what a failed deploy rolls back to."""
    state = state_path(settings)
    running = local_server_status(state)
    return base | {
        "instance_type": "local",
        "instance_count": 1,
        "supports_choice": False,  # `transformers serve` has no structured outputs for chat completions
        "config_name": None,
        "state_path": str(state),
        "previous_server": {"model_dir": running.model_dir, "port": running.port} if running else None,
    }


def bring_up(plan: dict[str, Any], ready_timeout_s: float) -> str:
    """Serve the plan's model (reusing a healthy server, replacing a dead or different one); returns its URL."""
    info = start_local_server(model_dir(plan["model_uri"]), plan["state_path"], ready_timeout_s=ready_timeout_s)
    return info.base_url


def ensure_serving(record: dict[str, Any], state: Path, ready_timeout_s: float = 120.0) -> str:
    """Restart the recorded endpoint's server if it died (a reboot, an OOM kill) on its recorded port, so the URL
    in the record stays true. For callers of a local endpoint, e.g. before a nightly classification run."""
    port = urlparse(record["url"]).port
    return start_local_server(model_dir(record["model_uri"]), state, port, ready_timeout_s=ready_timeout_s).base_url


def roll_back(plan: dict[str, Any], ready_timeout_s: float) -> str:
    """Restore what served before this run: the previous model's server on its old port (the URL in the endpoint
    record stays true), or no server if this run started it."""
    previous, new = plan["previous_server"], str(model_dir(plan["model_uri"]))
    if previous is None:
        stopped = stop_local_server(plan["state_path"])
        return "stopped the server this run started" if stopped else "no server running: nothing to roll back"
    if previous["model_dir"] == new:
        return f"{new} was served before this run: nothing to roll back"
    info = start_local_server(
        previous["model_dir"], plan["state_path"], previous["port"], ready_timeout_s=ready_timeout_s
    )
    return f"serving {previous['model_dir']} again at {info.base_url}"


def tear_down(settings: Settings) -> bool:
    """Stop the server and everything it started; True when one was running."""
    return stop_local_server(state_path(settings))
