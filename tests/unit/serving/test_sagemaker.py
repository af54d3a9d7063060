"""SageMaker deployment without AWS: names and requests, then the real provider operators and our rollback, cleanup,
autoscaling and teardown against botocore Stubbers — the paths moto cannot model (UpdateEndpoint, failed updates,
endpoints in progress, ml.g5 instance types)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import boto3
import pytest
from botocore.stub import ANY, Stubber

from tasks.serving import sagemaker as sme
from tasks.serving.runtime import djl_lmi_image_uri
from tasks.serving.sagemaker import _prepare_endpoint_update, _skip_existing

ROLE = "arn:aws:iam::123456789012:role/SageMakerExecution"
ARCHIVES = "s3://bucket/pipeline/serving/llava-classifier"
BASE = {
    "backend": "sagemaker",
    "endpoint_name": "llava-classifier",
    "model_version": "v7",
    "model_uri": "s3://bucket/pipeline/models/v7/model/",
    "taxonomy": "hotel",
    "prompt": "p",
    "max_image_tokens": 1200,
    "smoke_image_uri": "",
}
PARAMS = {
    "instance_type": "ml.g5.xlarge",
    "instance_count": 1,
    "min_instances": 1,
    "max_instances": 2,
    "target_invocations_per_instance": 50,
    "enable_prefix_caching": False,
    "images_per_prompt": 1,
    "extra_options": {},
}
NOW = datetime(2026, 11, 1, tzinfo=UTC)
OLD, NEW = "llava-classifier-v6-0123abcd", "llava-classifier-v7-4567cdef"
ACCOUNT = "arn:aws:sagemaker:us-east-1:123456789012"
ENDPOINT_ARN = f"{ACCOUNT}:endpoint/llava-classifier"
OK = {"ResponseMetadata": {"HTTPStatusCode": 200}}  # the provider's operators check it
NAME_RULE = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")


def make_plan(current: dict | None = None, **params) -> dict:
    return sme.plan(BASE, PARAMS | params, region="us-east-1", role_arn=ROLE, archive_prefix=ARCHIVES, current=current)


def stubbed(service: str):
    """A boto3 client with an active Stubber; every queued response must have been used by the end."""
    boto = boto3.client(service, region_name="us-east-1", aws_access_key_id="t", aws_secret_access_key="t")
    with Stubber(boto) as stubber:
        yield boto, stubber
        stubber.assert_no_pending_responses()


@pytest.fixture
def sm():
    yield from stubbed("sagemaker")


@pytest.fixture
def aas():
    yield from stubbed("application-autoscaling")


def endpoint(config: str, status: str = "InService") -> dict:
    return {
        "EndpointName": "llava-classifier",
        "EndpointArn": ENDPOINT_ARN,
        "EndpointConfigName": config,
        "EndpointStatus": status,
        "CreationTime": NOW,
        "LastModifiedTime": NOW,
    }


def endpoint_config(name: str, instance_type: str = "ml.g5.xlarge") -> dict:
    variant = {"VariantName": "AllTraffic", "ModelName": name, "InstanceType": instance_type, "InitialInstanceCount": 1}
    arn = f"{ACCOUNT}:endpoint-config/{name}"
    return {"EndpointConfigName": name, "EndpointConfigArn": arn, "ProductionVariants": [variant], "CreationTime": NOW}


def not_found(stubber: Stubber, method: str) -> None:
    stubber.add_client_error(method, "ValidationException", 'Could not find endpoint "x".', 400)


def owned(stubber: Stubber, names_by_owner: dict[str, str]) -> None:
    """Listing of configs then models, each followed by its tags (name -> owning endpoint)."""
    prefix = {"NameContains": "llava-classifier"}
    configs = [
        {"EndpointConfigName": n, "EndpointConfigArn": f"{ACCOUNT}:endpoint-config/{n}", "CreationTime": NOW}
        for n in names_by_owner
    ]
    stubber.add_response("list_endpoint_configs", {"EndpointConfigs": configs}, prefix)
    for name, owner in names_by_owner.items():
        stubber.add_response(
            "list_tags",
            {"Tags": [{"Key": sme.OWNER_TAG, "Value": owner}]},
            {"ResourceArn": f"{ACCOUNT}:endpoint-config/{name}"},
        )
    models = [{"ModelName": n, "ModelArn": f"{ACCOUNT}:model/{n}", "CreationTime": NOW} for n in names_by_owner]
    stubber.add_response("list_models", {"Models": models}, prefix)
    for name, owner in names_by_owner.items():
        stubber.add_response(
            "list_tags", {"Tags": [{"Key": sme.OWNER_TAG, "Value": owner}]}, {"ResourceArn": f"{ACCOUNT}:model/{name}"}
        )


# --- names and requests -------------------------------------------------------------------------------------------


def test_names_are_deterministic_valid_and_within_63_characters():
    assert make_plan()["config_name"] == make_plan()["config_name"]
    assert re.fullmatch(r"llava-classifier-v7-[0-9a-f]{8}", make_plan()["config_name"])
    long = sme.resource_name("e" * 63, "2026-11-25T10:00:00+00:00_run", "f" * 64)
    assert len(long) <= 63 and NAME_RULE.match(long) and long.endswith("-ffffffff")
    assert sme.resource_name("e" * 63, "v1", "a" * 64) != sme.resource_name("e" * 63, "v1", "b" * 64)
    for endpoint_name in ("a--b", "x" * 53 + "-y" + "z" * 8, "e" * 63):  # the cleanup filter finds every name
        name = sme.resource_name(endpoint_name, "v1", "c" * 64)
        assert name.startswith(sme.name_prefix(endpoint_name)) and NAME_RULE.match(name), name


def test_any_change_to_what_is_deployed_gets_a_new_name():
    """Otherwise "exists already, skip" would silently keep the old instance type or serving options."""
    names = {
        make_plan()["config_name"],
        make_plan(instance_type="ml.g5.2xlarge")["config_name"],
        make_plan(instance_count=2, max_instances=2)["config_name"],
        make_plan(enable_prefix_caching=True)["config_name"],
        make_plan(extra_options={"gpu_memory_utilization": 0.8})["config_name"],
    }
    assert len(names) == 5


def test_requests_for_a_g5_endpoint_with_the_lmi_image_and_the_archive():
    plan = make_plan()
    name, tar = plan["config_name"], f"{ARCHIVES}/{plan['config_name']}/model.tar.gz"
    tags = [{"Key": sme.OWNER_TAG, "Value": "llava-classifier"}, {"Key": sme.VERSION_TAG, "Value": "v7"}]
    assert plan["model_tar_uri"] == tar
    assert plan["model_request"] == {
        "ModelName": name,
        "ExecutionRoleArn": ROLE,
        "PrimaryContainer": {"Image": djl_lmi_image_uri("us-east-1"), "ModelDataUrl": tar},
        "Tags": tags,
    }
    [variant] = plan["endpoint_config_request"]["ProductionVariants"]
    assert variant["InstanceType"] == "ml.g5.xlarge" and variant["ModelName"] == name
    assert variant["ContainerStartupHealthCheckTimeoutInSeconds"] == 1200 + sme.STARTUP_MARGIN_S == 1500
    assert plan["endpoint_request"] == {"EndpointName": "llava-classifier", "EndpointConfigName": name, "Tags": tags}
    assert "option.model_id=s3://bucket/pipeline/models/v7/model/\n" in plan["serving_properties"]
    assert 'option.limit_mm_per_prompt={"image":1}\n' in plan["serving_properties"]
    assert plan["previous_config"] is None and plan["endpoint_up_to_date"] is False
    assert plan["supports_choice"] is True  # the runtime's LMI async mode honours the label constraint


def test_the_plan_remembers_what_served_before():
    assert make_plan(endpoint(OLD))["previous_config"] == OLD
    assert make_plan(endpoint(OLD))["endpoint_up_to_date"] is False
    name = make_plan()["config_name"]
    assert make_plan(endpoint(name))["endpoint_up_to_date"] is True
    assert make_plan(endpoint(name, "Updating"))["endpoint_up_to_date"] is False


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="ROLE_ARN"):
        sme.plan(BASE, PARAMS, region="us-east-1", role_arn="", archive_prefix=ARCHIVES, current=None)
    with pytest.raises(ValueError, match="instance_count"):
        make_plan(instance_count=3)


# --- the provider's operators, with our existence checks ----------------------------------------------------------


def operator_on(op, sagemaker):
    op.hook.conn = sagemaker  # the provider hook's cached boto3 client, replaced by the stubbed one
    return op


def test_a_g5_endpoint_config_through_the_provider_operator(sm):
    from airflow.providers.amazon.aws.operators.sagemaker import SageMakerEndpointConfigOperator

    sagemaker, stubber = sm
    request = make_plan()["endpoint_config_request"]
    op = operator_on(SageMakerEndpointConfigOperator(task_id="create_endpoint_config", config=request), sagemaker)
    not_found(stubber, "describe_endpoint_config")
    _skip_existing("endpoint_config")({"task": op})  # does not exist yet: no skip
    stubber.add_response("create_endpoint_config", {"EndpointConfigArn": f"{ACCOUNT}:endpoint-config/x", **OK}, request)
    stubber.add_response("describe_endpoint_config", endpoint_config(request["EndpointConfigName"]))
    result = op.execute({})
    assert result["EndpointConfig"]["ProductionVariants"][0]["InstanceType"] == "ml.g5.xlarge"


def test_an_existing_model_is_skipped_not_created_again(sm):
    from airflow.providers.amazon.aws.operators.sagemaker import SageMakerModelOperator
    from airflow.sdk.exceptions import AirflowSkipException

    sagemaker, stubber = sm
    request = make_plan()["model_request"]
    op = operator_on(SageMakerModelOperator(task_id="create_model", config=request), sagemaker)
    model = {"ModelName": request["ModelName"], "ModelArn": f"{ACCOUNT}:model/x", "CreationTime": NOW}
    stubber.add_response("describe_model", model, {"ModelName": request["ModelName"]})
    with pytest.raises(AirflowSkipException, match="exists already"):
        _skip_existing("model")({"task": op})


def test_update_path_swaps_the_config_then_cleanup_deletes_the_old_one(sm, aas, monkeypatch):
    """An existing endpoint: the operator's create turns into update_endpoint; once InService on the new config,
    cleanup deletes the old config and model (and leaves another endpoint's resources alone)."""
    from airflow.providers.amazon.aws.operators.sagemaker import SageMakerEndpointOperator

    sagemaker, stubber = sm
    autoscaling, _ = aas  # no call expected: the instance type stays the same
    plan = make_plan(endpoint(OLD))
    request = plan["endpoint_request"]
    op = operator_on(
        SageMakerEndpointOperator(task_id="deploy_endpoint", config=request, operation="create", check_interval=0),
        sagemaker,
    )
    # pre_execute: not up to date; same instance type as before, so autoscaling stays registered
    monkeypatch.setattr("tasks.serving.sagemaker._autoscaling", lambda conn_id: autoscaling)
    stubber.add_response("describe_endpoint", endpoint(OLD))
    stubber.add_response("describe_endpoint_config", endpoint_config(OLD))
    stubber.add_response("describe_endpoint_config", endpoint_config(NEW))
    _prepare_endpoint_update({"task": op, "ti": FakeTI(up_to_date=False)})

    stubber.add_client_error(
        "create_endpoint", "ValidationException", 'Cannot create already existing endpoint "arn:e".', 400
    )
    update = {"EndpointName": "llava-classifier", "EndpointConfigName": plan["config_name"]}  # tags dropped
    stubber.add_response("update_endpoint", {"EndpointArn": ENDPOINT_ARN, **OK}, update)
    stubber.add_response("describe_endpoint", endpoint(plan["config_name"], "Updating"))  # the waiter polls
    stubber.add_response("describe_endpoint", endpoint(plan["config_name"]))
    stubber.add_response("describe_endpoint_config", endpoint_config(plan["config_name"]))
    stubber.add_response("describe_endpoint", endpoint(plan["config_name"]))
    result = op.execute({})
    assert result["Endpoint"]["EndpointConfigName"] == plan["config_name"]

    stubber.add_response("describe_endpoint", endpoint(plan["config_name"]))
    stubber.add_response("describe_endpoint_config", endpoint_config(plan["config_name"]))
    owned(stubber, {OLD: "llava-classifier", plan["config_name"]: "llava-classifier", "llava-classifier-2-x": "other"})
    stubber.add_response("delete_endpoint_config", {}, {"EndpointConfigName": OLD})
    stubber.add_response("delete_model", {}, {"ModelName": OLD})
    assert sme.delete_superseded(sagemaker, "llava-classifier") == {"endpoint_configs": [OLD], "models": [OLD]}


class FakeTI:
    def __init__(self, up_to_date: bool) -> None:
        self.up_to_date = up_to_date

    def xcom_pull(self, task_ids: str, key: str) -> bool:
        assert (task_ids, key) == ("plan_deployment", "endpoint_up_to_date")
        return self.up_to_date


def test_an_endpoint_already_on_the_config_is_not_redeployed():
    from airflow.sdk.exceptions import AirflowSkipException

    with pytest.raises(AirflowSkipException, match="already ran this config"):
        _prepare_endpoint_update({"task": None, "ti": FakeTI(up_to_date=True)})


def test_a_new_instance_type_releases_autoscaling_first(sm, aas):
    sagemaker, stubber = sm
    autoscaling, aas_stubber = aas
    stubber.add_response("describe_endpoint", endpoint(OLD))
    stubber.add_response("describe_endpoint_config", endpoint_config(OLD, "ml.g5.xlarge"))
    stubber.add_response("describe_endpoint_config", endpoint_config(NEW, "ml.g5.2xlarge"))
    target = {
        "ServiceNamespace": "sagemaker",
        "ResourceId": "endpoint/llava-classifier/variant/AllTraffic",
        "ScalableDimension": "sagemaker:variant:DesiredInstanceCount",
    }
    aas_stubber.add_response("deregister_scalable_target", {}, target)
    assert sme.release_autoscaling_for_new_config(sagemaker, autoscaling, "llava-classifier", NEW) is True
    not_found(stubber, "describe_endpoint")  # a first deploy: nothing registered, nothing to release
    assert sme.release_autoscaling_for_new_config(sagemaker, autoscaling, "llava-classifier", NEW) is False


# --- rollback ------------------------------------------------------------------------------------------------------


def rollback_plan(previous: str | None) -> dict:
    return {"endpoint_name": "llava-classifier", "previous_config": previous, "config_name": NEW}


def test_a_failed_update_is_already_back_on_the_old_config(sm):
    """SageMaker reverts a failed UpdateEndpoint itself: rollback waits for it to settle and changes nothing."""
    sagemaker, stubber = sm
    stubber.add_response("describe_endpoint", endpoint(OLD, "Updating"))
    stubber.add_response("describe_endpoint", endpoint(OLD))
    assert "back on" in sme.roll_back(sagemaker, rollback_plan(OLD), delay_s=0)


def test_a_failed_smoke_test_rolls_the_endpoint_back_to_the_previous_config(sm):
    sagemaker, stubber = sm
    stubber.add_response("describe_endpoint", endpoint(NEW))
    stubber.add_response(
        "update_endpoint",
        {"EndpointArn": ENDPOINT_ARN},
        {"EndpointName": "llava-classifier", "EndpointConfigName": OLD},
    )
    stubber.add_response("describe_endpoint", endpoint(OLD, "Updating"))
    stubber.add_response("describe_endpoint", endpoint(OLD))
    assert sme.roll_back(sagemaker, rollback_plan(OLD), delay_s=0) == f"endpoint llava-classifier rolled back to {OLD}"


def test_a_new_endpoint_that_failed_is_deleted_and_an_unchanged_one_is_kept(sm):
    sagemaker, stubber = sm
    stubber.add_response("describe_endpoint", endpoint(NEW))
    stubber.add_response("delete_endpoint", {}, {"EndpointName": "llava-classifier"})
    assert "deleted endpoint" in sme.roll_back(sagemaker, rollback_plan(None), delay_s=0)
    stubber.add_response("describe_endpoint", endpoint(NEW))
    assert "nothing to roll back" in sme.roll_back(sagemaker, {**rollback_plan(NEW)}, delay_s=0)
    not_found(stubber, "describe_endpoint")
    assert "does not exist" in sme.roll_back(sagemaker, rollback_plan(None), delay_s=0)


def test_only_the_new_config_in_service_without_a_failure_reason_counts_as_deployed():
    assert sme.check_serves_new_config(endpoint(NEW), NEW) == f"endpoint llava-classifier is InService on {NEW}"
    reason = "The primary container for production variant AllTraffic did not pass the ping health check."
    failed_update = endpoint(OLD) | {"FailureReason": reason}  # AWS: back InService on the old config
    with pytest.raises(sme.DeployFailed, match=f"did not take {NEW}: it is InService on {OLD}; SageMaker says: "):
        sme.check_serves_new_config(failed_update, NEW)
    with pytest.raises(sme.DeployFailed, match="Failed on"):
        sme.check_serves_new_config(endpoint(NEW, "Failed"), NEW)
    with pytest.raises(sme.DeployFailed, match="does not exist"):
        sme.check_serves_new_config(None, NEW)


# --- cleanup, autoscaling, teardown --------------------------------------------------------------------------------


def test_cleanup_waits_while_the_endpoint_changes(sm):
    sagemaker, stubber = sm
    stubber.add_response("describe_endpoint", endpoint(NEW, "Updating"))
    assert sme.delete_superseded(sagemaker, "llava-classifier") == {"endpoint_configs": [], "models": []}


def test_cleanup_keeps_the_last_good_records_config_and_model(sm):
    """After a failed update the endpoint serves OLD; a record naming a third config keeps that one too."""
    sagemaker, stubber = sm
    kept = "llava-classifier-v5-89abcdef"
    stubber.add_response("describe_endpoint", endpoint(OLD))
    stubber.add_response("describe_endpoint_config", endpoint_config(OLD), {"EndpointConfigName": OLD})
    stubber.add_response("describe_endpoint_config", endpoint_config(kept), {"EndpointConfigName": kept})
    owned(stubber, {OLD: "llava-classifier", NEW: "llava-classifier", kept: "llava-classifier"})
    stubber.add_response("delete_endpoint_config", {}, {"EndpointConfigName": NEW})
    stubber.add_response("delete_model", {}, {"ModelName": NEW})
    deleted = sme.delete_superseded(sagemaker, "llava-classifier", also_keep=kept)
    assert deleted == {"endpoint_configs": [NEW], "models": [NEW]}


def test_autoscaling_registers_the_variant_and_a_target_tracking_policy(aas):
    autoscaling, stubber = aas
    target = {
        "ServiceNamespace": "sagemaker",
        "ResourceId": "endpoint/llava-classifier/variant/AllTraffic",
        "ScalableDimension": "sagemaker:variant:DesiredInstanceCount",
    }
    stubber.add_response("register_scalable_target", {}, target | {"MinCapacity": 1, "MaxCapacity": 3})
    policy = {
        "PolicyName": "llava-classifier-invocations",
        "PolicyType": "TargetTrackingScaling",
        "TargetTrackingScalingPolicyConfiguration": ANY,
    } | target
    stubber.add_response("put_scaling_policy", {"PolicyARN": "arn:p"}, policy)
    bounds = {"min_instances": 1, "max_instances": 3, "target_invocations_per_instance": 50}
    assert sme.register_autoscaling(autoscaling, "llava-classifier", bounds) == "llava-classifier-invocations"


def test_teardown_deletes_the_endpoint_then_everything_it_owns(sm, aas):
    sagemaker, stubber = sm
    autoscaling, aas_stubber = aas
    aas_stubber.add_client_error("deregister_scalable_target", "ObjectNotFoundException", "none", 400)
    stubber.add_response("describe_endpoint", endpoint(NEW))
    stubber.add_response("delete_endpoint", {}, {"EndpointName": "llava-classifier"})
    not_found(stubber, "describe_endpoint")  # the endpoint_deleted waiter
    not_found(stubber, "describe_endpoint")  # cleanup: the endpoint is gone, so nothing is in use
    owned(stubber, {OLD: "llava-classifier", NEW: "llava-classifier"})
    for name in (OLD, NEW):
        stubber.add_response("delete_endpoint_config", {}, {"EndpointConfigName": name})
    for name in (OLD, NEW):
        stubber.add_response("delete_model", {}, {"ModelName": name})
    assert sme.tear_down(sagemaker, autoscaling, "llava-classifier", delay_s=0) == {
        "endpoint_deleted": True,
        "autoscaling_deregistered": False,
        "endpoint_configs": [OLD, NEW],
        "models": [OLD, NEW],
    }
