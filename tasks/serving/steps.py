"""The one backend seam of `deploy_endpoint` and `teardown_endpoint`: the tasks behind each step.

Both backends run the same sequence, wired once in the DAG files: plan → bring up → smoke test → publish → scale,
a rollback when bringing up or the smoke test fails, and a cleanup that always runs. `steps_for(backend)` returns
what stands behind the backend-specific steps: the provider's SageMaker operators (idempotent through deterministic
names and existence checks), or a managed `transformers serve` process. Nothing else asks which backend it is.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Protocol

from airflow.sdk import TriggerRule, XComArg, task, task_group

from tasks.common.dag_defaults import SETTINGS

PLAN_TASK = "plan_deployment"
_PLAN_DOC = """Resolve the model version (param, else the registry's production model), check the endpoint name,
render what will be deployed and capture what serves now (the rollback point). Fails on an unknown version, a bad
name or a missing execution role: fix the param or setting and trigger again."""
_ROLL_BACK_DOC = """Runs only when bringing up or the smoke test failed. Restores what served before this run (the
previous config or server), or removes what this run created. Its log says which; the run stays failed either way.
If it fails itself, check the endpoint by hand and run `teardown_endpoint` if it is unusable."""


class DeploySteps(Protocol):
    """What each backend provides. `bring_up` returns its last task and the endpoint URL (local) or None."""

    def plan(self) -> XComArg: ...
    def bring_up(self, plan: XComArg) -> tuple[Any, XComArg | None]: ...
    def roll_back(self) -> Any: ...
    def scale(self, plan: XComArg) -> list[Any]: ...
    def clean_up(self) -> list[Any]: ...
    def tear_down(self) -> Any: ...


class LocalSteps:
    """A `transformers serve` process on loopback for the promoted tiny model."""

    def plan(self) -> XComArg:
        @task(task_id=PLAN_TASK, doc_md=_PLAN_DOC)
        def plan_deployment(params: dict | None = None) -> dict:
            from tasks.serving import deployment, local

            return local.plan(deployment.base_plan(SETTINGS, params), SETTINGS)

        return plan_deployment()

    def bring_up(self, plan: XComArg) -> tuple[Any, XComArg]:
        @task(
            doc_md="""Start (or reuse) `transformers serve` for the model and wait until it lists the model;
            a dead server or one serving another model is replaced. pid/port are in the state file named in the
            plan; the server log sits next to it (`local_server.log`). *Not ready in time*: read that log."""
        )
        def start_server(plan: dict, params: dict | None = None) -> str:
            from tasks.serving import local

            return local.bring_up(plan, params["ready_timeout_s"])

        @task_group(group_id="bring_up")
        def bring_up(plan: XComArg) -> XComArg:
            return start_server(plan)

        url = bring_up(plan)
        return url.operator, url

    def roll_back(self) -> Any:
        @task(trigger_rule=TriggerRule.ONE_FAILED, doc_md=_ROLL_BACK_DOC)
        def roll_back(params: dict | None = None) -> str:
            from tasks.serving import local

            return local.roll_back(_plan_or_skip(), params["ready_timeout_s"])

        return roll_back()

    def scale(self, plan: XComArg) -> list[Any]:
        return []  # one process on a laptop

    def clean_up(self) -> list[Any]:
        return []  # the server for a new model replaces the old one: nothing is left over

    def tear_down(self) -> Any:
        @task(doc_md="Stop the local server and every process it started. Safe to rerun.")
        def tear_down() -> bool:
            from tasks.serving import local

            return local.tear_down(SETTINGS)

        return tear_down()


class SageMakerSteps:
    """DJL LMI + vLLM on a SageMaker real-time endpoint, through the Amazon provider's operators."""

    def plan(self) -> XComArg:
        @task(task_id=PLAN_TASK, multiple_outputs=True, doc_md=_PLAN_DOC)
        def plan_deployment(params: dict | None = None) -> dict:
            from tasks.common.storage import plain_uri
            from tasks.serving import deployment, sagemaker

            base = deployment.base_plan(SETTINGS, params)
            archives = plain_uri(deployment.serving_root(SETTINGS) / base["endpoint_name"])
            return sagemaker.plan(
                base,
                params,
                region=SETTINGS.region,
                role_arn=SETTINGS.sagemaker_role_arn,
                archive_prefix=archives,
                current=sagemaker.describe(_sagemaker(), "endpoint", base["endpoint_name"]),
            )

        return plan_deployment()

    def bring_up(self, plan: XComArg) -> tuple[Any, None]:
        from airflow.providers.amazon.aws.operators.sagemaker import (
            SageMakerEndpointConfigOperator,
            SageMakerEndpointOperator,
            SageMakerModelOperator,
        )

        @task(
            doc_md="""Upload `model.tar.gz` (only `code/serving.properties`; LMI loads the weights from
            `option.model_id`) to the plan's `model_tar_uri`. Byte-identical on every retry."""
        )
        def package_serving_config(plan: dict) -> str:
            from tasks.common.storage import storage_path, write_bytes_atomic
            from tasks.serving.config import package_model_tar

            write_bytes_atomic(
                storage_path(plan["model_tar_uri"], SETTINGS.aws_conn_id), package_model_tar(plan["serving_properties"])
            )
            return plan["model_tar_uri"]

        @task_group(group_id="bring_up")
        def bring_up(plan: XComArg) -> Any:
            model = SageMakerModelOperator(
                task_id="create_model",
                config=plan["model_request"],
                aws_conn_id=SETTINGS.aws_conn_id,
                pre_execute=_skip_existing("model"),
                doc_md="""SageMaker model (DJL LMI image + the archive). Skipped when the deterministic name
                exists already, so a retry never makes a second one.""",
            )
            config = SageMakerEndpointConfigOperator(
                task_id="create_endpoint_config",
                config=plan["endpoint_config_request"],
                aws_conn_id=SETTINGS.aws_conn_id,
                pre_execute=_skip_existing("endpoint_config"),
                trigger_rule=TriggerRule.NONE_FAILED,
                doc_md="""Endpoint config (instance type/count, startup timeouts). Skipped when it exists.""",
            )
            endpoint = SageMakerEndpointOperator(
                task_id="deploy_endpoint",
                config=plan["endpoint_request"],
                operation="create",  # the operator switches to update when the endpoint exists
                deferrable=True,
                check_interval=30,
                max_ingestion_time=3600,
                aws_conn_id=SETTINGS.aws_conn_id,
                pre_execute=_prepare_endpoint_update,
                trigger_rule=TriggerRule.NONE_FAILED,
                # A failed deploy is rarely transient and costs minutes of GPU time per attempt: one late retry
                # (a lost worker or triggerer), after any update still rolling has settled.
                retries=1,
                retry_delay=timedelta(minutes=10),
                doc_md="""Create the endpoint, or update it to the new config (blue/green: no downtime), and wait
                for InService in the triggerer. Skipped when the endpoint already ran this config at plan time.
                *Failed*: SageMaker's FailureReason is in the log (often: image pull, role access to the model
                S3 prefix, model_loading_timeout). *`Cannot update in-progress endpoint`*: a previous attempt's
                update is still rolling; clear the task once the endpoint has settled.""",
            )
            package_serving_config(plan) >> model >> config >> endpoint
            return endpoint

        return bring_up(plan), None

    def roll_back(self) -> Any:
        @task(trigger_rule=TriggerRule.ONE_FAILED, doc_md=_ROLL_BACK_DOC)
        def roll_back() -> str:
            from tasks.serving import sagemaker

            return sagemaker.roll_back(_sagemaker(), _plan_or_skip())

        return roll_back()

    def scale(self, plan: XComArg) -> list[Any]:
        @task(
            doc_md="""Register the variant with Application Auto Scaling (min/max from the params) and a
            target-tracking policy on invocations per instance. Both calls are upserts: safe to rerun."""
        )
        def register_autoscaling(plan: dict) -> str:
            from tasks.serving import sagemaker

            return sagemaker.register_autoscaling(_autoscaling(), plan["endpoint_name"], plan["autoscaling"])

        return [register_autoscaling(plan)]

    def clean_up(self) -> list[Any]:
        @task(
            doc_md="""Always runs last, also after a failure: deletes this endpoint's configs and models that it
            does not use now (superseded versions, or what a failed run left behind). Postponed while the endpoint
            is changing. A teardown task: its own outcome does not decide the run's state."""
        )
        def delete_superseded() -> dict:
            from tasks.serving import sagemaker

            return sagemaker.delete_superseded(_sagemaker(), _plan_or_skip()["endpoint_name"])

        return [delete_superseded().as_teardown()]

    def tear_down(self) -> Any:
        @task(
            doc_md="""Deregister autoscaling, delete the endpoint (waits until it is gone), then every endpoint
            config and model tagged with its name. Safe to rerun; a missing endpoint is fine."""
        )
        def tear_down(params: dict | None = None) -> dict:
            from tasks.serving import sagemaker

            return sagemaker.tear_down(_sagemaker(), _autoscaling(), params["endpoint_name"])

        return tear_down()


def steps_for(backend: str) -> DeploySteps:
    return LocalSteps() if backend == "local" else SageMakerSteps()


def _sagemaker() -> Any:
    from airflow.providers.amazon.aws.hooks.sagemaker import SageMakerHook

    return SageMakerHook(aws_conn_id=SETTINGS.aws_conn_id).conn


def _autoscaling() -> Any:
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

    return AwsBaseHook(aws_conn_id=SETTINGS.aws_conn_id, client_type="application-autoscaling").conn


def _plan_or_skip() -> dict[str, Any]:
    """The run's plan for the tasks that also run after a failure (taken as an argument, a missing plan would
    fail them instead of saying that nothing was deployed)."""
    from airflow.sdk import get_current_context
    from airflow.sdk.exceptions import AirflowSkipException

    plan = get_current_context()["ti"].xcom_pull(task_ids=PLAN_TASK)
    if plan is None:
        raise AirflowSkipException(f"{PLAN_TASK} did not finish: nothing was deployed")
    return plan


def _skip_existing(kind: str):
    """pre_execute hook: skip a create operator whose resource exists (the provider's operators do not check)."""

    def check(context: Any) -> None:
        from airflow.sdk.exceptions import AirflowSkipException

        from tasks.serving import sagemaker

        operator = context["task"]
        name = operator.config[sagemaker.NAME_FIELD[kind]]
        if sagemaker.describe(operator.hook.conn, kind, name) is not None:
            raise AirflowSkipException(f"{kind} {name} exists already: nothing to create")

    return check


def _prepare_endpoint_update(context: Any) -> None:
    """pre_execute hook of deploy_endpoint; it runs again when the deferred task resumes, which is harmless:
    the plan's flag does not change, and after the update the instance types match."""
    from airflow.sdk.exceptions import AirflowSkipException

    from tasks.serving import sagemaker

    if context["ti"].xcom_pull(task_ids=PLAN_TASK, key="endpoint_up_to_date"):
        raise AirflowSkipException("the endpoint already ran this config InService when the run was planned")
    request = context["task"].config
    sagemaker.release_autoscaling_for_new_config(
        context["task"].hook.conn, _autoscaling(), request["EndpointName"], request["EndpointConfigName"]
    )
