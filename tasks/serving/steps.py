"""The Airflow-facing steps of `deploy_endpoint` and `teardown_endpoint`: the backend seam and the shared task bodies.

Both backends run the same sequence with the same task ids, wired once in the DAG files: plan → bring up (package the
serving config → model → endpoint config → endpoint) → smoke test → publish → scale, a rollback when bringing up or
the smoke test fails, and a cleanup that always runs. A step with nothing to do on a backend is a no-op task there.
`serving_backend` picks the deployment's `ServingBackend` once: the provider's SageMaker operators (idempotent
through deterministic names and existence checks), or a managed vLLM server process (its CPU build).
"""

from __future__ import annotations

from typing import Any, Protocol

from airflow.sdk import XComArg

from tasks.common.settings import Settings
from tasks.costs.pricing import EndpointPricing
from tasks.model.taxonomy import load_taxonomy
from tasks.records.endpoint import EndpointRecord
from tasks.serving import deployment

PLAN_TASK = "plan_deployment"
PLAN_DOC = """Resolve the model version (param, else the registry's production model), check the endpoint name,
render what will be deployed and capture what serves now (the rollback point). Fails on an unknown version, a bad
name or a missing execution role: fix the param or setting and trigger again."""
ROLL_BACK_DOC = """Runs only when bringing up or the smoke test failed. Restores what served before this run (the
previous config or server), or removes what this run created. Its log says which; the run stays failed either way.
If it fails itself, check the endpoint by hand and run `teardown_endpoint` if it is unusable."""
NOTHING_TO_DO = "Nothing to do on this backend: {why} (the task exists so both backends run the same steps)."


class ServingBackend(Protocol):
    """What stands behind each backend-specific step. `bring_up` adds the `bring_up` group (package_serving_config,
    create_model, create_endpoint_config, deploy_endpoint) and returns its last task and the endpoint URL (an
    XComArg; None where the endpoint has no URL)."""

    def plan(self) -> XComArg: ...
    def bring_up(self, plan: XComArg) -> tuple[Any, XComArg | None]: ...
    def roll_back(self) -> Any: ...
    def scale(self, plan: XComArg) -> Any: ...
    def clean_up(self) -> Any: ...
    def tear_down(self) -> Any: ...
    def ensure_serving(self, record: EndpointRecord) -> None:
        """Called before classifying through a recorded endpoint: bring it back if it can be (a local server)."""

    def default_pricing(self) -> EndpointPricing:
        """The pricing of the endpoint deploy_endpoint deploys with its default params: what a budget estimate
        prices before any endpoint is deployed."""


def serving_backend(settings: Settings) -> ServingBackend:
    def local() -> ServingBackend:
        from tasks.serving.local import LocalServing

        return LocalServing(settings)

    def sagemaker() -> ServingBackend:
        from tasks.serving.sagemaker import SageMakerServing

        return SageMakerServing(settings)

    return settings.by_backend(local=local, sagemaker=sagemaker)


def smoke_test(settings: Settings, plan: dict[str, Any], url: str | None) -> str:
    """Classify one known image through the endpoint as the nightly run would; the label it answers."""
    record = deployment.endpoint_record(plan, url)
    image, expected = deployment.smoke_image(plan["smoke_image_uri"], settings)
    return deployment.smoke_test(
        deployment.endpoint_spec(record, settings.aws_conn_id),
        load_taxonomy(record.taxonomy),
        image,
        prompt=record.prompt,
        policy=deployment.resize_policy(record),
        calibration=record.calibration,
        expected=expected,
    )


def publish_endpoint(settings: Settings, plan: dict[str, Any], url: str | None) -> dict[str, Any]:
    """Write the endpoint record (what classify_images calls); returns it."""
    record = deployment.endpoint_record(plan, url)
    deployment.publish_record(deployment.serving_root(settings), record)
    return record.to_dict()


def forget_endpoint(settings: Settings, endpoint_name: str) -> bool:
    return deployment.remove_record(deployment.serving_root(settings), endpoint_name)


def plan_or_skip() -> dict[str, Any]:
    """The run's plan for the tasks that also run after a failure (taken as an argument, a missing plan would
    fail them instead of saying that nothing was deployed)."""
    from airflow.sdk import get_current_context
    from airflow.sdk.exceptions import AirflowSkipException

    plan = get_current_context()["ti"].xcom_pull(task_ids=PLAN_TASK)
    if plan is None:
        raise AirflowSkipException(f"{PLAN_TASK} did not finish: nothing was deployed")
    return plan
