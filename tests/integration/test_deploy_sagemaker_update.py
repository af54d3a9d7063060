"""deploy_endpoint updating a live endpoint, through `bin/airflow dags test` with the real provider operators, on
moto_server extended with UpdateEndpoint as AWS documents it (tests.moto_documented): a good update swaps the
config; a failed one returns InService on the old config with a FailureReason, which boto's waiter calls success.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from support.registry import register
from tasks.common.storage import MODELS, SERVING, storage_path
from tasks.model.vision_tokens import PRODUCTION_GEOMETRY
from tasks.serving.deployment import current_endpoint
from tests.integration.conftest import AirflowRunner, Moto
from tests.integration.test_deploy_sagemaker import CONF, promote, queue_answer
from tests.moto_documented import FAILURE_FILE_ENV

pytestmark = pytest.mark.slow
REASON = "The primary container for production variant AllTraffic did not pass the ping health check."


def promote_v2(storage_uri: str) -> None:
    models = storage_path(storage_uri, "aws_default") / MODELS
    model = "s3://pipeline-bucket/pipeline/models/v2/model/"
    register(models, "v2", model, taxonomy="hotel", metrics={"accuracy": 0.95}, geometry=PRODUCTION_GEOMETRY)


def deploy_v1_then_promote_v2(airflow: AirflowRunner, moto: Moto) -> tuple[str, str]:
    storage = airflow.env["PIPELINE_STORAGE_URI"]
    promote(storage)
    queue_answer(moto, "this is a photo of Lobby.")
    first = airflow.dags_test("deploy_endpoint", CONF)
    assert first.succeeded, first.output[-6000:]
    v1_config = current_endpoint(storage_path(storage, "aws_default") / SERVING).config_name
    promote_v2(storage)
    return storage, v1_config


def test_a_failed_update_fails_the_run_and_keeps_the_version_that_serves(
    sagemaker_airflow: AirflowRunner, moto: Moto, aws_failures: dict[str, Path]
):
    storage, v1_config = deploy_v1_then_promote_v2(sagemaker_airflow, moto)
    failure_file = aws_failures[FAILURE_FILE_ENV]
    failure_file.write_text(REASON)
    try:
        failed = sagemaker_airflow.dags_test("deploy_endpoint", CONF)
    finally:
        failure_file.unlink()
    out = failed.output
    assert not failed.succeeded and "state=failed, run_type" in out, out[-6000:]
    assert "did not take llava-classifier-v2-" in out and f"it is InService on {v1_config}" in out, out[-6000:]
    assert REASON in out
    assert f"endpoint llava-classifier is back on {v1_config} (SageMaker rolled the failed update back)" in out
    assert "Marking task as FAILED" in out or "state=failed" in out

    record = current_endpoint(storage_path(storage, "aws_default") / SERVING)
    assert (record.model_version, record.config_name) == ("v1", v1_config)  # not the version that failed
    sm = moto.boto3_client("sagemaker")
    assert sm.describe_endpoint(EndpointName="llava-classifier")["EndpointConfigName"] == v1_config
    # cleanup removed the failed v2 config and model (nothing orphaned) and kept what serves
    assert [c["EndpointConfigName"] for c in sm.list_endpoint_configs()["EndpointConfigs"]] == [v1_config]
    assert [m["ModelName"] for m in sm.list_models()["Models"]] == [v1_config]


def test_a_good_update_swaps_the_config_and_cleans_up_the_old_one(sagemaker_airflow: AirflowRunner, moto: Moto):
    storage, v1_config = deploy_v1_then_promote_v2(sagemaker_airflow, moto)
    queue_answer(moto, "this is a photo of Pool.")
    updated = sagemaker_airflow.dags_test("deploy_endpoint", CONF)
    assert updated.succeeded, updated.output[-6000:]
    record = current_endpoint(storage_path(storage, "aws_default") / SERVING)
    assert record.model_version == "v2" and record.config_name != v1_config
    assert f"endpoint llava-classifier is InService on {record.config_name}" in updated.output
    sm = moto.boto3_client("sagemaker")
    assert [c["EndpointConfigName"] for c in sm.list_endpoint_configs()["EndpointConfigs"]] == [record.config_name]
    assert [m["ModelName"] for m in sm.list_models()["Models"]] == [record.config_name]
