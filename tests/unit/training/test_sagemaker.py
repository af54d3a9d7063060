"""AttachingTrainingOperator against a stubbed SageMaker API (botocore Stubber): the states moto cannot produce."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from airflow.providers.amazon.aws.hooks.sagemaker import SageMakerHook
from airflow.providers.amazon.aws.triggers.sagemaker import SageMakerTrigger
from airflow.sdk.exceptions import AirflowException, AirflowFailException, TaskDeferred
from botocore.stub import Stubber

from tasks.training.sagemaker import AttachingTrainingOperator

JOB = "finetune-llava-manual-2026-11-01-abcdef12"
CONFIG = {
    "TrainingJobName": JOB,
    "RoleArn": "arn:aws:iam::123456789012:role/SageMakerExecution",
    "AlgorithmSpecification": {"TrainingImage": "image", "TrainingInputMode": "File"},
    "HyperParameters": {"sagemaker_program": "launch.py"},
    "InputDataConfig": [
        {
            "ChannelName": "train",
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://bucket/datasets/d/"}},
        }
    ],
    "OutputDataConfig": {"S3OutputPath": "s3://bucket/models/v", "CompressionType": "NONE"},
    "ResourceConfig": {"InstanceType": "ml.g5.48xlarge", "InstanceCount": 1, "VolumeSizeInGB": 300},
    "StoppingCondition": {"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 7200},
    "EnableManagedSpotTraining": True,
}
START = datetime(2026, 11, 1, tzinfo=UTC)


def described(status: str, **extra) -> dict:
    return {
        "TrainingJobName": JOB,
        "TrainingJobArn": f"arn:aws:sagemaker:us-east-1:123456789012:training-job/{JOB}",
        "TrainingJobStatus": status,
        "SecondaryStatus": status,
        "AlgorithmSpecification": {"TrainingInputMode": "File"},
        "ResourceConfig": CONFIG["ResourceConfig"],
        "StoppingCondition": CONFIG["StoppingCondition"],
        "EnableManagedSpotTraining": True,
        "CreationTime": START,
        "ModelArtifacts": {"S3ModelArtifacts": f"s3://bucket/models/v/{JOB}/output/model/"},
        **extra,
    }


NOT_FOUND = {"service_error_code": "ValidationException", "service_message": "Requested resource not found."}


@pytest.fixture
def operator(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setattr(SageMakerHook, "check_s3_url", lambda self, url: True)  # input channels "exist"
    return AttachingTrainingOperator(task_id="train", config=dict(CONFIG), aws_conn_id=None, region_name="us-east-1")


@pytest.fixture
def stub(operator):
    with Stubber(operator.hook.conn) as stubber:
        yield stubber
        stubber.assert_no_pending_responses()


@pytest.mark.parametrize("status", ["Failed", "Stopped"])
def test_an_existing_job_that_ended_badly_fails_the_task_with_its_reason_and_is_not_relaunched(operator, stub, status):
    reason = "AlgorithmError: CUDA out of memory" if status == "Failed" else "Stopped by user alice"
    stub.add_response("describe_training_job", described(status, FailureReason=reason), {"TrainingJobName": JOB})
    stub.add_response("describe_training_job", described(status, FailureReason=reason), {"TrainingJobName": JOB})
    with pytest.raises(AirflowFailException, match=f"{JOB} ended {status}: {reason}"):  # no retries: same job
        operator.execute({})  # no create_training_job is stubbed: creating one would fail the test


@pytest.mark.parametrize("status", ["Failed", "Stopped"])
def test_a_new_job_that_ends_badly_fails_the_task_with_its_reason(operator, stub, status):
    stub.add_client_error("describe_training_job", **NOT_FOUND)
    stub.add_response("create_training_job", {"TrainingJobArn": "arn"}, CONFIG)
    stub.add_response("describe_training_job", described(status, FailureReason="ResourceLimitExceeded"))
    with pytest.raises(AirflowFailException, match=f"ended {status}: ResourceLimitExceeded"):
        operator.execute({})


def test_a_running_job_is_attached_to_and_waited_for_in_the_triggerer(operator, stub):
    stub.add_response("describe_training_job", described("InProgress"), {"TrainingJobName": JOB})
    stub.add_response("describe_training_job", described("InProgress"), {"TrainingJobName": JOB})
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute({})
    trigger = deferred.value.trigger
    assert isinstance(trigger, SageMakerTrigger) and trigger.job_name == JOB
    assert trigger.attempts * trigger.waiter_delay >= 7200  # covers the spot wait


def test_success_is_the_job_status_not_the_trigger_event(operator, stub):
    """apache/airflow#69042: the trigger said success while the job had failed."""
    stub.add_response("describe_training_job", described("Failed", FailureReason="ClientError: no space left"))
    with pytest.raises(AirflowFailException, match="no space left"):
        operator.execute_complete({}, {"status": "success", "job_name": JOB})


def test_a_job_still_running_after_the_wait_fails_retryably(operator, stub):
    stub.add_response("describe_training_job", described("InProgress"))
    with pytest.raises(AirflowException, match="still InProgress") as raised:
        operator.execute_complete({}, {"status": "timeout", "job_name": JOB})
    assert not isinstance(raised.value, AirflowFailException)  # a retry attaches and waits again


def test_a_completed_job_returns_its_billing_outcome(operator, stub):
    stub.add_client_error("describe_training_job", **NOT_FOUND)
    stub.add_response("create_training_job", {"TrainingJobArn": "arn"}, CONFIG)
    done = described(
        "Completed",
        TrainingStartTime=START,
        TrainingEndTime=START,
        TrainingTimeInSeconds=1200,
        BillableTimeInSeconds=400,
    )
    stub.add_response("describe_training_job", done)
    outcome = operator.execute({})
    assert outcome["job_name"] == JOB and outcome["billable_seconds"] == 400 and outcome["train_seconds"] == 1200
    assert outcome["spot"] is True and outcome["price_per_hour_usd"] == 20.36  # the saving is in billable seconds
