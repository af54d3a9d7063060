"""The local serving backend: one managed vLLM server (its CPU build) on loopback per storage root.

The server's pid/port state file must sit on the disk of the machine that runs the process: under the storage root
when that is `file://`, else (local backend against `s3://` storage) under `$AIRFLOW_HOME/serving/`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from airflow.sdk import TriggerRule, XComArg, task, task_group
from airflow.sdk.exceptions import AirflowFailException

from tasks.common.settings import Settings
from tasks.common.storage import SERVING, local_path
from tasks.costs.pricing import EndpointPricing
from tasks.records.endpoint import EndpointRecord
from tasks.serving import deployment
from tasks.serving.local_server import ServerExited, local_server_status, start_local_server, stop_local_server
from tasks.serving.steps import NOTHING_TO_DO, PLAN_DOC, PLAN_TASK, ROLL_BACK_DOC, plan_or_skip

STATE_NAME = "local_server.json"
PRICE_REGION = "local"  # the price table prices the local server as a small CPU instance


class LocalServing:
    """A vLLM server process on loopback for the promoted tiny model: the engine production's container runs."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def plan(self) -> XComArg:
        settings = self.settings

        @task(task_id=PLAN_TASK, doc_md=PLAN_DOC)
        def plan_deployment(params: dict | None = None) -> dict:
            return plan(deployment.base_plan(settings, params), settings)

        return plan_deployment()

    def bring_up(self, plan: XComArg) -> tuple[Any, XComArg]:
        @task(doc_md=NOTHING_TO_DO.format(why="the server loads the model directory as it is"))
        def package_serving_config(plan: dict) -> None:
            return None

        @task(doc_md=NOTHING_TO_DO.format(why="there is no model resource besides the model directory"))
        def create_model() -> None:
            return None

        @task(doc_md=NOTHING_TO_DO.format(why="the server's settings are its command line"))
        def create_endpoint_config() -> None:
            return None

        @task(
            doc_md="""Start (or reuse) vLLM's OpenAI-compatible server for the model and wait until it lists the
            model (about a minute on 2 cores); a dead server or one serving another model is replaced. pid/port are
            in the state file named in the plan; the server log sits next to it (`local_server.log`).
            **Not ready in time**: read that log. **Exited before it was ready** (not retried): the log's last lines,
            in the error, say why (e.g. a model directory it cannot load)."""
        )
        def deploy_endpoint(plan: dict, params: dict | None = None) -> str:
            try:
                return bring_up(plan, params["ready_timeout_s"])
            except ServerExited as exc:  # not retried: the same model exits the same way again
                raise AirflowFailException(str(exc)) from exc

        @task(doc_md=NOTHING_TO_DO.format(why="deploy_endpoint returns only once the server lists this model"))
        def verify_deployment() -> None:
            return None

        @task_group(group_id="bring_up")
        def bring_up_group(plan: XComArg) -> tuple[Any, XComArg]:
            url = deploy_endpoint(plan)
            verified = verify_deployment()
            package_serving_config(plan) >> create_model() >> create_endpoint_config() >> url >> verified
            return verified, url

        verified, url = bring_up_group(plan)
        return verified, url

    def roll_back(self) -> Any:
        @task(trigger_rule=TriggerRule.ONE_FAILED, doc_md=ROLL_BACK_DOC)
        def roll_back(params: dict | None = None) -> str:
            return restore_previous(plan_or_skip(), params["ready_timeout_s"])

        return roll_back()

    def scale(self, plan: XComArg) -> Any:
        @task(doc_md=NOTHING_TO_DO.format(why="one process on one machine"))
        def register_autoscaling(plan: dict) -> None:
            return None

        return register_autoscaling(plan)

    def clean_up(self) -> Any:
        @task(doc_md=NOTHING_TO_DO.format(why="a server for a new model replaces the old one; nothing is left over"))
        def delete_superseded() -> None:
            return None

        return delete_superseded().as_teardown()

    def tear_down(self) -> Any:
        settings = self.settings

        @task(doc_md="Stop the local server and every process it started. Safe to rerun.")
        def tear_down() -> bool:
            return stop_local_server(state_path(settings))

        return tear_down()

    def default_pricing(self) -> EndpointPricing:
        return EndpointPricing("local", PRICE_REGION, PRICE_REGION, 1)

    def ensure_serving(self, record: EndpointRecord) -> None:
        """Restart the recorded endpoint's server if it died (a reboot, an OOM kill) on its recorded port, so the
        URL in the record stays true."""
        port = urlparse(record.url or "").port
        start_local_server(model_dir(record.model_uri(self.settings.storage_uri)), state_path(self.settings), port)


def state_path(settings: Settings) -> Path:
    if settings.storage_uri.startswith("file://"):
        return local_path(settings.storage_uri) / SERVING / STATE_NAME
    home = os.environ.get("AIRFLOW_HOME") or Path.home() / "airflow"
    return Path(home) / SERVING / STATE_NAME


def model_dir(model_uri: str) -> Path:
    """The local directory of a registered model (the local backend serves from disk, never from S3)."""
    return local_path(model_uri, "the local server").resolve()


def plan(base: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Add the local facts to a base plan; the model served now is what a failed deploy rolls back to."""
    state = state_path(settings)
    running = local_server_status(state)
    return base | {
        "instance_type": PRICE_REGION,
        "instance_count": 1,
        "transport": "openai_http",
        "price_region": PRICE_REGION,
        "supports_choice": True,  # vLLM honours `structured_outputs: {"choice": [...]}`, as in production
        "config_name": None,
        "state_path": str(state),
        "previous_server": {"model_dir": running.model_dir, "port": running.port} if running else None,
    }


def bring_up(plan: dict[str, Any], ready_timeout_s: float) -> str:
    """Serve the plan's model (reusing a healthy server, replacing a dead or different one); returns its URL."""
    info = start_local_server(model_dir(plan["model_uri"]), plan["state_path"], ready_timeout_s=ready_timeout_s)
    return info.base_url


def restore_previous(plan: dict[str, Any], ready_timeout_s: float) -> str:
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
