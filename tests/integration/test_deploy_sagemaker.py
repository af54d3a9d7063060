"""deploy_endpoint and teardown_endpoint on the SageMaker backend against moto_server, through `bin/airflow dags
test` with the real provider operators (the endpoint wait deferred to the in-process triggerer).

moto rejects ml.g5 instance types, and cannot update or fail an endpoint by itself: tests.moto_documented adds
UpdateEndpoint as AWS documents it (test_deploy_sagemaker_update.py), and botocore Stubbers cover the rest
(tests/unit/serving/test_sagemaker.py). moto's invoke_endpoint answers from a queue of canned bodies,
cached per request body, so each test that needs a new answer sends a different smoke image.
"""

from __future__ import annotations

import io
import json
import tarfile
import urllib.request
from dataclasses import replace

import pytest

from support.registry import register
from tasks.common.storage import MODELS, SERVING, storage_path
from tasks.model.demo_data import digits
from tasks.model.images import encode_png
from tasks.model.taxonomy import load_taxonomy
from tasks.model.vision_tokens import PRODUCTION_GEOMETRY
from tasks.records.endpoint import EndpointRecord
from tasks.serving.deployment import current_endpoint
from tasks.serving.runtime import djl_lmi_image_uri
from tests.integration.conftest import AirflowRunner, Moto

pytestmark = pytest.mark.slow
HOTEL = load_taxonomy("hotel")
MODEL_REF = "models/v1/model/"  # as finetune_llava registers it: relative to the storage root
MODEL_URI = f"s3://pipeline-bucket/pipeline/{MODEL_REF}"
CONF = {"instance_type": "ml.m5.xlarge", "max_instances": 3}  # moto's instance-type enum predates ml.g5


def promote(storage_uri: str) -> None:
    models = storage_path(storage_uri, "aws_default") / MODELS
    register(models, "v1", MODEL_REF, taxonomy="hotel", geometry=PRODUCTION_GEOMETRY)


def queue_answer(moto: Moto, answer: str) -> None:
    body = {
        "choices": [{"message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1176, "completion_tokens": 8},
    }
    results = {"results": [{"Body": json.dumps(body), "ContentType": "application/json"}]}
    request = urllib.request.Request(
        f"{moto.endpoint}/moto-api/static/sagemaker/endpoint-results",
        data=json.dumps(results).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    urllib.request.urlopen(request).read()


def properties(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines())


def test_deploy_end_to_end_then_rerun_creates_nothing_then_teardown(sagemaker_airflow: AirflowRunner, moto: Moto):
    storage = sagemaker_airflow.env["PIPELINE_STORAGE_URI"]
    serving = storage_path(storage, "aws_default") / SERVING
    promote(storage)
    queue_answer(moto, "this is a photo of Lobby.")
    deployed = sagemaker_airflow.dags_test("deploy_endpoint", CONF)
    assert deployed.succeeded, deployed.output[-6000:]

    sm, s3 = moto.boto3_client("sagemaker"), moto.boto3_client("s3")
    record = current_endpoint(serving)
    name = record.config_name
    assert replace(record, deployed_at="") == EndpointRecord(
        backend="sagemaker",
        endpoint_name="llava-classifier",
        transport="sagemaker_runtime",
        url=None,
        model_version="v1",
        model=MODEL_REF,
        taxonomy="hotel",
        prompt=HOTEL.prompt(),
        instance_type="ml.m5.xlarge",
        instance_count=1,
        price_region="us-east-1",
        supports_choice=True,
        max_image_tokens=1200,
        vision_geometry=PRODUCTION_GEOMETRY,
        config_name=name,
        deployed_at="",
    )
    endpoint = sm.describe_endpoint(EndpointName="llava-classifier")
    assert endpoint["EndpointStatus"] == "InService" and endpoint["EndpointConfigName"] == name
    [variant] = sm.describe_endpoint_config(EndpointConfigName=name)["ProductionVariants"]
    assert (variant["ModelName"], variant["InstanceType"], variant["InitialInstanceCount"]) == (
        name,
        "ml.m5.xlarge",
        1,
    )
    container = sm.describe_model(ModelName=name)["PrimaryContainer"]
    tar_key = f"pipeline/serving/llava-classifier/{name}/model.tar.gz"
    assert container == {"Image": djl_lmi_image_uri("us-east-1"), "ModelDataUrl": f"s3://pipeline-bucket/{tar_key}"}
    archive = s3.get_object(Bucket=moto.bucket, Key=tar_key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        assert tar.getnames() == ["code", "code/serving.properties"]
        served = properties(tar.extractfile("code/serving.properties").read().decode())
    assert served == {
        "engine": "Python",
        "option.model_id": MODEL_URI,
        "option.rolling_batch": "disable",
        "option.async_mode": "true",
        "option.entryPoint": "djl_python.lmi_vllm.vllm_async_service",
        "option.tensor_parallel_degree": "max",
        "option.max_rolling_batch_size": "64",
        "option.model_loading_timeout": "1200",
        "option.max_model_len": "7200",
        "option.limit_mm_per_prompt": '{"image":1}',
    }
    [target] = moto.boto3_client("application-autoscaling").describe_scalable_targets(ServiceNamespace="sagemaker")[
        "ScalableTargets"
    ]
    assert (target["ResourceId"], target["MinCapacity"], target["MaxCapacity"]) == (
        "endpoint/llava-classifier/variant/AllTraffic",
        1,
        3,
    )

    again = sagemaker_airflow.dags_test("deploy_endpoint", CONF)  # a rerun (or a retry) finds everything in place
    assert again.succeeded, again.output[-6000:]
    assert again.output.count("exists already: nothing to create") == 2 and "already ran this config" in again.output
    assert [c["EndpointConfigName"] for c in sm.list_endpoint_configs()["EndpointConfigs"]] == [name]
    assert [m["ModelName"] for m in sm.list_models()["Models"]] == [name]

    torn = sagemaker_airflow.dags_test("teardown_endpoint")
    assert torn.succeeded, torn.output[-6000:]
    assert sm.list_endpoints()["Endpoints"] == [] and sm.list_endpoint_configs()["EndpointConfigs"] == []
    assert sm.list_models()["Models"] == [] and current_endpoint(serving) is None


def test_a_new_endpoint_that_fails_its_smoke_test_is_removed(sagemaker_airflow: AirflowRunner, moto: Moto):
    storage = sagemaker_airflow.env["PIPELINE_STORAGE_URI"]
    promote(storage)
    probe = f"{storage}/smoke/seven.png"
    storage_path(probe, "aws_default").write_bytes(encode_png(next(digits(range(7, 8))).image))
    queue_answer(moto, "I think it is a kitchen")
    failed = sagemaker_airflow.dags_test("deploy_endpoint", CONF | {"smoke_image_uri": probe})
    assert not failed.succeeded and "state=failed, run_type" in failed.output, failed.output[-6000:]
    assert "SmokeTestFailed" in failed.output and "deleted endpoint llava-classifier" in failed.output
    sm = moto.boto3_client("sagemaker")
    assert sm.list_endpoints()["Endpoints"] == [] and sm.list_endpoint_configs()["EndpointConfigs"] == []
    assert sm.list_models()["Models"] == []  # delete_superseded ran after the rollback
    assert current_endpoint(storage_path(storage, "aws_default") / SERVING) is None
