"""AttachingTrainingOperator against a stubbed SageMaker API (botocore Stubber): the states moto cannot produce."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest
from airflow.providers.amazon.aws.hooks.sagemaker import SageMakerHook
from airflow.providers.amazon.aws.triggers.sagemaker import SageMakerTrigger
from airflow.sdk.exceptions import AirflowException, AirflowFailException, TaskDeferred
from botocore.stub import Stubber

from tasks.common.storage import storage_path
from tasks.training.registry import production_model
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


def rerun_request(run_key: str, **params) -> dict:
    """The CreateTrainingJob request a run of the same dataset and config builds (tests.unit.training.test_plan)."""
    from tasks.common.settings import load_settings
    from tasks.training.plan import plan_training
    from tasks.training.sagemaker import create_training_job_request
    from tasks.training.steps import training_backend
    from tests.unit.training.test_plan import DATASET, PARAMS, ROLE, SAGEMAKER_ENV

    settings = load_settings(SAGEMAKER_ENV)
    backend = training_backend(settings)
    plan = plan_training(
        backend, settings, PARAMS | params, DATASET, dag_id="finetune_llava", run_key=run_key, run_time=START
    )
    return create_training_job_request(plan, role_arn=ROLE, image_uri="I", source_uri=f"{plan.model_root}/s.tar.gz")


def test_a_job_stopped_at_max_runtime_keeps_its_checkpoints_and_the_rerun_resumes_them(monkeypatch):
    first = rerun_request("2026-11-01T00:00:00+00:00")
    checkpoints = first["CheckpointConfig"]["S3Uri"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    operator = AttachingTrainingOperator(task_id="train", config=first, aws_conn_id=None, region_name="us-east-1")
    stopped = described(
        "Stopped",
        TrainingJobName=first["TrainingJobName"],
        SecondaryStatus="MaxRuntimeExceeded",
        FailureReason="Training job reached the maximum runtime of 3600 seconds.",
        CheckpointConfig=first["CheckpointConfig"],
    )
    with Stubber(operator.hook.conn) as stub:
        stub.add_response("describe_training_job", stopped)
        with pytest.raises(AirflowFailException) as failed:
            operator.execute_complete({}, {"status": "success", "job_name": first["TrainingJobName"]})
        stub.assert_no_pending_responses()
    message = str(failed.value)
    assert "ended Stopped: Training job reached the maximum runtime" in message
    assert f"the checkpoints are kept at {checkpoints} and a new run" in message and "resumes" in message

    # The rerun: another DAG run (another job name, another model version), a larger MaxRuntime, another
    # checkpoint interval; same dataset and training config -> the same checkpoint prefix, so train.py resumes.
    rerun = rerun_request("2026-11-02T00:00:00+00:00", max_run_seconds=4 * 3600, max_wait_seconds=8 * 3600)
    assert rerun["TrainingJobName"] != first["TrainingJobName"]
    assert rerun["OutputDataConfig"]["S3OutputPath"] != first["OutputDataConfig"]["S3OutputPath"]
    assert rerun["CheckpointConfig"] == first["CheckpointConfig"]
    assert checkpoints.startswith("s3://bucket/pipe/models/checkpoints/hotel-")  # not under a model version
    changed = rerun_request("2026-11-02T00:00:00+00:00", hyperparameters={"num_train_epochs": 4, "max_steps": 50})
    assert changed["CheckpointConfig"]["S3Uri"] != checkpoints  # another training: never resumes the first's


def test_a_job_stopped_without_checkpoints_says_only_why(operator, stub):
    stub.add_response("describe_training_job", described("Stopped", FailureReason="Stopped by user alice"))
    with pytest.raises(AirflowFailException) as failed:
        operator.execute_complete({}, {"status": "success", "job_name": JOB})
    assert str(failed.value).endswith(f"{JOB} ended Stopped: Stopped by user alice")


def test_the_model_and_evaluation_files_are_located_from_describe_not_rebuilt(operator, stub):
    """A describe whose ModelArtifacts differ from the `<S3OutputPath>/<job>/output/model/` layout is honoured."""
    elsewhere = "s3://bucket/somewhere-else/job-7/artifacts/model"
    stub.add_response("describe_training_job", described("Completed", ModelArtifacts={"S3ModelArtifacts": elsewhere}))
    outcome = operator.execute_complete({}, {"status": "success", "job_name": JOB})
    assert outcome["model_uri"] == elsewhere + "/"
    assert outcome["output_uri"] == elsewhere + "/evaluation"  # train.py's output_data_dir under /opt/ml/model


def test_a_model_left_as_an_archive_fails_the_task_before_evaluation(operator, stub):
    archive = f"s3://bucket/models/v/{JOB}/output/model.tar.gz"
    done = described(
        "Completed",
        ModelArtifacts={"S3ModelArtifacts": archive},
        OutputDataConfig={"S3OutputPath": "s3://bucket/models/v", "CompressionType": "GZIP"},
    )
    stub.add_response("describe_training_job", done)
    with pytest.raises(
        AirflowFailException, match=r"left its model as an archive, .*model\.tar\.gz \(CompressionType GZIP\)"
    ):
        operator.execute_complete({}, {"status": "success", "job_name": JOB})


def test_evaluation_registry_and_promotion_use_the_located_model(tmp_path):
    """Through the DAG's task bodies: evaluation reads the files where the job put them, and the registry and the
    promoted model name that model prefix, not the plan's expectation."""
    import json

    from tasks.common.settings import load_settings
    from tasks.training import steps
    from tasks.training.plan import TrainingOutcome, plan_training
    from tests.unit.training.test_plan import DATASET, PARAMS

    settings = load_settings({"PIPELINE_BACKEND": "sagemaker", "PIPELINE_STORAGE_URI": tmp_path.as_uri()})
    dataset = replace(DATASET, taxonomy="digits")
    plan = plan_training(
        steps.training_backend(settings), settings, PARAMS, dataset, dag_id="d", run_key="r", run_time=START
    )
    located = tmp_path / "elsewhere" / "model"
    (located / "evaluation").mkdir(parents=True)
    rows = [{"index": i, "label": str(i % 10), "answer": f"this is a photo of {i % 10}."} for i in range(20)]
    (located / "evaluation" / "eval_predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (located / "evaluation" / "train_summary.json").write_text(json.dumps({"train_seconds": 9.0, "global_step": 50}))
    outcome = TrainingOutcome(
        JOB,
        "us-east-1",
        "ml.g5.48xlarge",
        1,
        True,
        10.0,
        20.36,
        9.0,
        model_uri=located.as_uri() + "/",
        output_uri=(located / "evaluation").as_uri(),
    )
    assert plan.model_uri != outcome.model_uri
    metrics = steps.evaluate(settings, plan.to_dict(), outcome.to_dict())
    assert (metrics["accuracy"], metrics["model_uri"], metrics["global_step"]) == (1.0, outcome.model_uri, 50)
    params = {"min_accuracy": 0.5, "tolerance": 0.01}
    promoted = steps.promote(
        settings, plan.to_dict(), metrics, params, {}, {"dag_id": "d", "run_id": "r"}, outcome.to_dict()
    )
    assert promoted["model_uri"] == outcome.model_uri
    registry = json.loads((tmp_path / "models" / "registry.json").read_text())
    assert registry["versions"][plan.version]["model"] == "elsewhere/model/"  # relative to the storage root
    assert production_model(storage_path(settings.storage_uri) / "models").model_uri(settings.storage_uri) == (
        outcome.model_uri
    )
