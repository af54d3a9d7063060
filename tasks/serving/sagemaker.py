"""The SageMaker serving backend: deterministic names, create requests, rollback, cleanup, autoscaling, and the
provider's operators that bring an endpoint up.

Every function takes boto3 clients (from the provider's hooks in tasks, from a Stubber in tests). Model and endpoint
config share one name, a pure function of the endpoint, the model version and everything that goes into them, so a
retry finds what the first try made, and a changed setting never hides behind an old config of the same version.
Ownership is a tag, not a name prefix: cleanup and teardown never touch another endpoint's resources.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from datetime import timedelta
from typing import Any

from airflow.sdk import TriggerRule, XComArg, task, task_group

from tasks.common.aws_names import MAX_NAME, sagemaker_name, slug
from tasks.common.sagemaker_jobs import NAME_FIELD, describe
from tasks.common.settings import Settings
from tasks.common.storage import plain_uri, storage_path, write_bytes_atomic
from tasks.costs.pricing import EndpointPricing
from tasks.records.endpoint import EndpointRecord
from tasks.serving import deployment
from tasks.serving.config import ServingConfig, package_model_tar, render_serving_properties
from tasks.serving.runtime import djl_lmi_image_uri
from tasks.serving.steps import PLAN_DOC, PLAN_TASK, ROLL_BACK_DOC, plan_or_skip

log = logging.getLogger(__name__)

VARIANT = "AllTraffic"
OWNER_TAG = "llava-pipeline:endpoint"
VERSION_TAG = "llava-pipeline:model-version"
SCALABLE_DIMENSION = "sagemaker:variant:DesiredInstanceCount"
IN_PROGRESS = {"Creating", "Updating", "SystemUpdating", "RollingBack", "Deleting"}
# LMI downloads the weights itself (option.model_id) and loads them within model_loading_timeout; SageMaker's
# health check must wait at least as long, or it kills a container that is still loading.
STARTUP_MARGIN_S = 300
_LIST = {
    "model": ("list_models", "Models", "ModelArn"),
    "endpoint_config": ("list_endpoint_configs", "EndpointConfigs", "EndpointConfigArn"),
}


def resource_name(endpoint_name: str, version: str, digest: str) -> str:
    """`<endpoint>-<version>-<digest8>`, cut to SageMaker's 63 characters; the digest keeps cut names unique."""
    return sagemaker_name(f"{endpoint_name}-{slug(version)}", digest)


def name_prefix(endpoint_name: str) -> str:
    """What every resource name of this endpoint starts with (a cheap server-side filter before the tags)."""
    return endpoint_name[: MAX_NAME - 9].rstrip("-")


def plan(
    base: dict[str, Any],
    params: dict[str, Any],
    *,
    region: str,
    role_arn: str,
    archive_prefix: str,
    current: dict[str, Any] | None,
) -> dict[str, Any]:
    """Add the SageMaker requests to a base plan.

    The model archive goes to `<archive_prefix>/<name>/model.tar.gz`; `current` is the endpoint's describe_endpoint
    (None when it does not exist): its config is what a failed deploy rolls back to.
    """
    if not role_arn:
        raise ValueError("PIPELINE_SAGEMAKER_ROLE_ARN is not set: SageMaker models need an execution role")
    if not params["min_instances"] <= params["instance_count"] <= params["max_instances"]:
        raise ValueError("instance_count must lie within [min_instances, max_instances]")
    config = ServingConfig(
        model_uri=base["model_uri"],
        enable_prefix_caching=params["enable_prefix_caching"] or None,
        limit_mm_per_prompt={"image": params["images_per_prompt"]},
        extra_options=params["extra_options"],
    )
    properties = render_serving_properties(config)
    image = djl_lmi_image_uri(region)
    variant = {"InstanceType": params["instance_type"], "InitialInstanceCount": params["instance_count"]}
    identity = json.dumps([base["endpoint_name"], properties, image, role_arn, variant], sort_keys=True)
    name = resource_name(base["endpoint_name"], base["model_version"], hashlib.sha256(identity.encode()).hexdigest())
    tags = [{"Key": OWNER_TAG, "Value": base["endpoint_name"]}, {"Key": VERSION_TAG, "Value": base["model_version"]}]
    tar_uri = f"{archive_prefix.rstrip('/')}/{name}/model.tar.gz"
    return base | {
        "instance_type": params["instance_type"],
        "instance_count": params["instance_count"],
        "transport": "sagemaker_runtime",
        "price_region": region,
        "supports_choice": True,  # the runtime's LMI mode passes the label constraint to vLLM (runtime.json)
        "config_name": name,
        "previous_config": current["EndpointConfigName"] if current else None,
        "endpoint_up_to_date": serves(current, name),
        "serving_properties": properties,
        "model_tar_uri": tar_uri,
        "model_request": {
            "ModelName": name,
            "ExecutionRoleArn": role_arn,
            "PrimaryContainer": {"Image": image, "ModelDataUrl": tar_uri},
            "Tags": tags,
        },
        "endpoint_config_request": {
            "EndpointConfigName": name,
            "ProductionVariants": [
                {
                    "VariantName": VARIANT,
                    "ModelName": name,
                    **variant,
                    "ContainerStartupHealthCheckTimeoutInSeconds": config.model_loading_timeout_s + STARTUP_MARGIN_S,
                    "ModelDataDownloadTimeoutInSeconds": config.model_loading_timeout_s + STARTUP_MARGIN_S,
                }
            ],
            "Tags": tags,
        },
        "endpoint_request": {"EndpointName": base["endpoint_name"], "EndpointConfigName": name, "Tags": tags},
        "autoscaling": {
            "min_instances": params["min_instances"],
            "max_instances": params["max_instances"],
            "target_invocations_per_instance": params["target_invocations_per_instance"],
        },
    }


def serves(endpoint: dict[str, Any] | None, config_name: str) -> bool:
    """The endpoint is InService on exactly this config: nothing left to create, update or wait for."""
    return (
        bool(endpoint) and endpoint["EndpointConfigName"] == config_name and endpoint["EndpointStatus"] == "InService"
    )


class DeployFailed(Exception):
    """The endpoint does not serve the config this run deployed (raised as a non-retryable task failure)."""


def check_serves_new_config(endpoint: dict[str, Any] | None, config_name: str) -> str:
    """After the wait: the endpoint must be InService on exactly `config_name`, with no FailureReason.

    boto's `endpoint_in_service` waiter (the provider's deferrable trigger) succeeds on InService alone, but a failed
    UpdateEndpoint also ends InService: "If the status of the endpoint is Failed, or the status is InService but
    update operation fails, this provides the reason why it failed" (AWS API reference, DescribeEndpoint
    FailureReason), on the old config. Passing that on would publish a version that does not serve.
    """
    if endpoint is None:
        raise DeployFailed(f"the endpoint does not exist after deploying {config_name}")
    name, status = endpoint["EndpointName"], endpoint["EndpointStatus"]
    serving, reason = endpoint["EndpointConfigName"], endpoint.get("FailureReason")
    if serving != config_name or status != "InService" or reason:
        raise DeployFailed(
            f"endpoint {name} did not take {config_name}: it is {status} on {serving}"
            + (f"; SageMaker says: {reason}" if reason else "")
        )
    return f"endpoint {name} is InService on {config_name}"


def release_autoscaling_for_new_config(sm: Any, aas: Any, endpoint_name: str, new_config: str) -> bool:
    """UpdateEndpoint refuses to change the instance type of a variant registered with Application Auto Scaling;
    deregister it first (`register_autoscaling` registers it again after the smoke test). True when deregistered."""
    endpoint = describe(sm, "endpoint", endpoint_name)
    if endpoint is None or _instance_types(sm, endpoint["EndpointConfigName"]) == _instance_types(sm, new_config):
        return False
    return _deregister(aas, endpoint_name)


def roll_back(sm: Any, plan: dict[str, Any], *, delay_s: int = 30, max_attempts: int = 120) -> str:
    """Restore what served before this run: the previous config, or no endpoint at all if this run created it.

    A failed UpdateEndpoint already leaves SageMaker on the old config; a smoke-test failure needs an update back.
    An endpoint that existed on this very config before the run is left alone: this run changed nothing.
    """
    name, previous, new = plan["endpoint_name"], plan["previous_config"], plan["config_name"]
    endpoint = _settled(sm, name, delay_s, max_attempts)
    if endpoint is None:
        return f"endpoint {name} does not exist: nothing to roll back"
    if previous is None:
        sm.delete_endpoint(EndpointName=name)
        return f"deleted endpoint {name}: this run created it and it failed"
    if previous == new:
        return f"endpoint {name} already ran {new} before this run: nothing to roll back"
    if serves(endpoint, previous):
        return f"endpoint {name} is back on {previous} (SageMaker rolled the failed update back)"
    sm.update_endpoint(EndpointName=name, EndpointConfigName=previous)
    sm.get_waiter("endpoint_in_service").wait(
        EndpointName=name, WaiterConfig={"Delay": delay_s, "MaxAttempts": max_attempts}
    )
    return f"endpoint {name} rolled back to {previous}"


def delete_superseded(sm: Any, endpoint_name: str, also_keep: str | None = None) -> dict[str, list[str]]:
    """Delete this endpoint's configs and models that it does not use now (all of them when it is gone), except
    `also_keep` (the config of the last good endpoint record, which Batch Transform runs on) and its models.

    Nothing is touched while the endpoint is changing: the config an update is moving to is not "in use" yet.
    """
    endpoint = describe(sm, "endpoint", endpoint_name)
    if endpoint is not None and endpoint["EndpointStatus"] in IN_PROGRESS:
        log.warning("endpoint %s is %s: cleanup postponed", endpoint_name, endpoint["EndpointStatus"])
        return {"endpoint_configs": [], "models": []}
    serving = endpoint["EndpointConfigName"] if endpoint else None
    keep_configs = list(dict.fromkeys(name for name in (serving, also_keep) if name))
    kept = [describe(sm, "endpoint_config", name) or {} for name in keep_configs]
    keep_models = {variant["ModelName"] for config in kept for variant in config.get("ProductionVariants", [])}
    configs = [c for c in _owned(sm, "endpoint_config", endpoint_name) if c not in keep_configs]
    models = [m for m in _owned(sm, "model", endpoint_name) if m not in keep_models]
    for config in configs:
        sm.delete_endpoint_config(EndpointConfigName=config)
    for model in models:
        sm.delete_model(ModelName=model)
    return {"endpoint_configs": configs, "models": models}


def register_autoscaling(aas: Any, endpoint_name: str, autoscaling: dict[str, int]) -> str:
    """Target tracking on invocations per instance (both calls are upserts, so a retry is harmless)."""
    target = _scalable_target(endpoint_name)
    aas.register_scalable_target(
        **target, MinCapacity=autoscaling["min_instances"], MaxCapacity=autoscaling["max_instances"]
    )
    policy = f"{endpoint_name}-invocations"
    aas.put_scaling_policy(
        PolicyName=policy,
        PolicyType="TargetTrackingScaling",
        TargetTrackingScalingPolicyConfiguration={
            "TargetValue": float(autoscaling["target_invocations_per_instance"]),
            "PredefinedMetricSpecification": {"PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"},
            "ScaleOutCooldown": 120,
            "ScaleInCooldown": 600,  # model loading takes minutes: do not give capacity back on a short lull
        },
        **target,
    )
    return policy


def tear_down(sm: Any, aas: Any, endpoint_name: str, *, delay_s: int = 15, max_attempts: int = 80) -> dict[str, Any]:
    """Delete the endpoint, then every config and model it owns (also those a crashed run leaked)."""
    deregistered = _deregister(aas, endpoint_name)
    endpoint = _settled(sm, endpoint_name, delay_s, max_attempts)
    if endpoint is not None:
        sm.delete_endpoint(EndpointName=endpoint_name)
        sm.get_waiter("endpoint_deleted").wait(
            EndpointName=endpoint_name, WaiterConfig={"Delay": delay_s, "MaxAttempts": max_attempts}
        )
    leftovers = delete_superseded(sm, endpoint_name)
    return {"endpoint_deleted": endpoint is not None, "autoscaling_deregistered": deregistered} | leftovers


def _settled(sm: Any, name: str, delay_s: int, max_attempts: int) -> dict[str, Any] | None:
    """describe_endpoint once it is no longer changing (SageMaker refuses to update or delete it meanwhile)."""
    endpoint = describe(sm, "endpoint", name)
    attempts = 0
    while endpoint is not None and endpoint["EndpointStatus"] in IN_PROGRESS:
        attempts += 1
        if attempts > max_attempts:
            raise TimeoutError(f"endpoint {name} still {endpoint['EndpointStatus']} after {delay_s * max_attempts}s")
        time.sleep(delay_s)
        endpoint = describe(sm, "endpoint", name)
    return endpoint


def _owned(sm: Any, kind: str, endpoint_name: str) -> list[str]:
    """Names of this endpoint's models or endpoint configs, by owner tag."""
    lister, key, arn_key = _LIST[kind]
    names = []
    for page in sm.get_paginator(lister).paginate(NameContains=name_prefix(endpoint_name)):
        for item in page[key]:
            tags = {t["Key"]: t["Value"] for t in sm.list_tags(ResourceArn=item[arn_key])["Tags"]}
            if tags.get(OWNER_TAG) == endpoint_name:
                names.append(item[NAME_FIELD[kind]])
    return names


def _instance_types(sm: Any, config_name: str) -> set[str]:
    config = describe(sm, "endpoint_config", config_name) or {}
    return {variant["InstanceType"] for variant in config.get("ProductionVariants", [])}


def _scalable_target(endpoint_name: str) -> dict[str, str]:
    resource_id = f"endpoint/{endpoint_name}/variant/{VARIANT}"
    return {"ServiceNamespace": "sagemaker", "ResourceId": resource_id, "ScalableDimension": SCALABLE_DIMENSION}


def _deregister(aas: Any, endpoint_name: str) -> bool:
    """Deregister the variant's scalable target (its policies go with it); False when none was registered."""
    from botocore.exceptions import ClientError

    try:
        aas.deregister_scalable_target(**_scalable_target(endpoint_name))
    except ClientError as exc:
        if exc.response["Error"]["Code"] == "ObjectNotFoundException":
            return False
        raise
    return True


class SageMakerServing:
    """DJL LMI + vLLM on a SageMaker real-time endpoint, through the Amazon provider's operators."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def plan(self) -> XComArg:
        @task(task_id=PLAN_TASK, multiple_outputs=True, doc_md=PLAN_DOC)
        def plan_deployment(params: dict | None = None) -> dict:
            base = deployment.base_plan(self.settings, params)
            archives = plain_uri(deployment.serving_root(self.settings) / base["endpoint_name"])
            return plan(
                base,
                params,
                region=self.settings.region,
                role_arn=self.settings.sagemaker_role_arn,
                archive_prefix=archives,
                current=describe(_sagemaker(self.settings.aws_conn_id), "endpoint", base["endpoint_name"]),
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
            archive = storage_path(plan["model_tar_uri"], self.settings.aws_conn_id)
            write_bytes_atomic(archive, package_model_tar(plan["serving_properties"]))
            return plan["model_tar_uri"]

        @task(
            trigger_rule=TriggerRule.NONE_FAILED,  # deploy_endpoint is skipped when the endpoint was already right
            doc_md="""Checks what the wait cannot: the endpoint is InService on exactly this run's config, with no
            FailureReason. A failed UpdateEndpoint also ends InService, on the old config (AWS: DescribeEndpoint
            `FailureReason`), and the provider's wait reports that as success.

**Runbook** — **failed**: the log has SageMaker's reason (health check, image pull, role access to the model prefix,
model_loading_timeout); the old config still serves and `roll_back` says so; `serving/endpoint.json` and the registry
keep the version that really serves. Fix the cause and trigger again.""",
        )
        def verify_deployment(plan: dict) -> str:
            from airflow.sdk.exceptions import AirflowFailException

            endpoint = describe(_sagemaker(self.settings.aws_conn_id), "endpoint", plan["endpoint_name"])
            try:
                verdict = check_serves_new_config(endpoint, plan["config_name"])
            except DeployFailed as exc:
                raise AirflowFailException(str(exc)) from None
            log.info(verdict)
            return verdict

        @task_group(group_id="bring_up")
        def bring_up(plan: XComArg) -> Any:
            model = SageMakerModelOperator(
                task_id="create_model",
                config=plan["model_request"],
                aws_conn_id=self.settings.aws_conn_id,
                pre_execute=_skip_existing("model"),
                doc_md="""SageMaker model (DJL LMI image + the archive). Skipped when the deterministic name
                exists already, so a retry never makes a second one.""",
            )
            config = SageMakerEndpointConfigOperator(
                task_id="create_endpoint_config",
                config=plan["endpoint_config_request"],
                aws_conn_id=self.settings.aws_conn_id,
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
                aws_conn_id=self.settings.aws_conn_id,
                pre_execute=_prepare_endpoint_update,
                trigger_rule=TriggerRule.NONE_FAILED,
                # A failed deploy is rarely transient and costs minutes of GPU time per attempt: one late retry
                # (a lost worker or triggerer), after any update still rolling has settled.
                retries=1,
                retry_delay=timedelta(minutes=10),
                doc_md="""Create the endpoint, or update it to the new config (blue/green: no downtime), and wait
                for InService in the triggerer. Skipped when the endpoint already ran this config at plan time.
                **Failed**: SageMaker's FailureReason is in the log (often: image pull, role access to the model
                S3 prefix, model_loading_timeout). **`Cannot update in-progress endpoint`**: a previous attempt's
                update is still rolling; clear the task once the endpoint has settled.""",
            )
            package_serving_config(plan) >> model >> config >> endpoint
            return endpoint >> verify_deployment(plan)

        return bring_up(plan), None

    def roll_back(self) -> Any:
        @task(task_id="roll_back", trigger_rule=TriggerRule.ONE_FAILED, doc_md=ROLL_BACK_DOC)
        def roll_back_task() -> str:
            return roll_back(_sagemaker(self.settings.aws_conn_id), plan_or_skip())

        return roll_back_task()

    def scale(self, plan: XComArg) -> Any:
        @task(
            task_id="register_autoscaling",
            doc_md="""Register the variant with Application Auto Scaling (min/max from the params) and a
            target-tracking policy on invocations per instance. Both calls are upserts: safe to rerun.""",
        )
        def register_autoscaling_task(plan: dict) -> str:
            return register_autoscaling(
                _autoscaling(self.settings.aws_conn_id), plan["endpoint_name"], plan["autoscaling"]
            )

        return register_autoscaling_task(plan)

    def clean_up(self) -> Any:
        @task(
            task_id="delete_superseded",
            doc_md="""Always runs last, also after a failure: deletes this endpoint's configs and models that it
            does not use now (superseded versions, or what a failed run left behind), never the ones of
            `serving/endpoint.json` (the last good deploy, which Batch Transform runs on). Postponed while the
            endpoint is changing. A teardown task: its own outcome does not decide the run's state.""",
        )
        def delete_superseded_task() -> dict:
            name = plan_or_skip()["endpoint_name"]
            record = deployment.current_endpoint(deployment.serving_root(self.settings))
            last_good = record.config_name if record and record.endpoint_name == name else None
            return delete_superseded(_sagemaker(self.settings.aws_conn_id), name, also_keep=last_good)

        return delete_superseded_task().as_teardown()

    def tear_down(self) -> Any:
        @task(
            task_id="tear_down",
            doc_md="""Deregister autoscaling, delete the endpoint (waits until it is gone), then every endpoint
            config and model tagged with its name. Safe to rerun; a missing endpoint is fine.""",
        )
        def tear_down_task(params: dict | None = None) -> dict:
            return tear_down(
                _sagemaker(self.settings.aws_conn_id), _autoscaling(self.settings.aws_conn_id), params["endpoint_name"]
            )

        return tear_down_task()

    def default_pricing(self) -> EndpointPricing:
        return EndpointPricing("sagemaker", self.settings.region, deployment.DEFAULT_INSTANCE_TYPE, 1)

    def ensure_serving(self, record: EndpointRecord) -> None:
        """Nothing to restart: SageMaker keeps the endpoint's instances healthy, and a broken endpoint shows up as
        failed requests (recorded as `failed` rows, retried by the next run)."""


def _sagemaker(conn_id: str) -> Any:
    from airflow.providers.amazon.aws.hooks.sagemaker import SageMakerHook

    return SageMakerHook(aws_conn_id=conn_id).conn


def _autoscaling(conn_id: str) -> Any:
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

    return AwsBaseHook(aws_conn_id=conn_id, client_type="application-autoscaling").conn


def _skip_existing(kind: str):
    """pre_execute hook: skip a create operator whose resource exists (the provider's operators do not check)."""

    def check(context: Any) -> None:
        from airflow.sdk.exceptions import AirflowSkipException

        operator = context["task"]
        name = operator.config[NAME_FIELD[kind]]
        if describe(operator.hook.conn, kind, name) is not None:
            raise AirflowSkipException(f"{kind} {name} exists already: nothing to create")

    return check


def _prepare_endpoint_update(context: Any) -> None:
    """pre_execute hook of deploy_endpoint; it runs again when the deferred task resumes, which is harmless:
    the plan's flag does not change, and after the update the instance types match."""
    from airflow.sdk.exceptions import AirflowSkipException

    if context["ti"].xcom_pull(task_ids=PLAN_TASK, key="endpoint_up_to_date"):
        raise AirflowSkipException("the endpoint already ran this config InService when the run was planned")
    request = context["task"].config
    release_autoscaling_for_new_config(
        context["task"].hook.conn,
        _autoscaling(context["task"].aws_conn_id),
        request["EndpointName"],
        request["EndpointConfigName"],
    )
