"""finetune_llava end to end through `bin/airflow dags test`: the local backend trains the tiny model for real; the
SageMaker backend sends its real CreateTrainingJob request to moto_server (extended with AWS's uncompressed model
output and MaxRuntime stops: tests.moto_documented), attaches to that job on a rerun, and a new run after
a Stopped job points at the checkpoints it left."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from datasets import load_from_disk

from support.digits import curated_digits
from tasks.common.settings import load_settings
from tasks.common.storage import fsspec_options, plain_uri, storage_path
from tasks.curation.curate import CurationOptions, curate_uri
from tasks.model.demo_data import write_labelled
from tasks.model.taxonomy import load_taxonomy
from tasks.records.model import ModelVersion
from tasks.training.sagemaker import PRODUCTION_BASE_MODEL
from tests.integration.conftest import AirflowRunner, Moto
from tests.moto_documented import STOP_FILE_ENV

pytestmark = pytest.mark.slow
SHORT_TRAINING = {"max_steps": 3, "save_steps": 2, "logging_steps": 1}
LOGICAL_DATE = "2026-11-01T00:00:00+00:00"


def test_local_backend_trains_evaluates_and_promotes(local_airflow: AirflowRunner) -> None:
    storage = Path(storage_path(local_airflow.env["PIPELINE_STORAGE_URI"]).path)
    dataset = curated_digits(storage / "datasets" / "digits-small", 100)  # newest: found without a param
    conf = {"hyperparameters": SHORT_TRAINING, "min_accuracy": 0.0}
    result = local_airflow.dags_test("finetune_llava", conf)
    assert result.succeeded, result.output[-6000:]
    assert "Starting fresh" in result.output and "'loss'" in result.output  # the script's lines in the task log

    (version,) = [p.name for p in (storage / "models").iterdir() if p.is_dir()]
    root = storage / "models" / version
    metrics = json.loads((root / "metrics.json").read_text())
    assert {"accuracy", "per_class", "invalid_rate", "n_test", "train_seconds"} <= set(metrics)
    assert metrics["dataset_uri"] == dataset.as_uri() and metrics["global_step"] == 3
    assert metrics["n_test"] == json.loads((dataset / "curation_report.json").read_text())["splits"]["test"]
    for name in ("confusion_matrix.png", "eval_predictions.jsonl", "model/config.json", "model/model.safetensors"):
        assert (root / name).is_file(), name
    registry = json.loads((storage / "models" / "registry.json").read_text())
    assert registry["production"] == version
    entry = registry["versions"][version]
    assert (entry["model"], entry["dataset"]) == (
        f"models/{version}/model",
        "datasets/digits-small",
    )  # relative to the root
    report = json.loads((dataset / "curation_report.json").read_text())
    assert (entry["max_image_tokens"], entry["dataset_fingerprint"]) == (
        report["options"]["max_image_tokens"],
        report["fingerprint"],
    )
    assert list((storage / "costs" / "ledger" / "kind=training").glob("*.parquet"))


def curate_on_s3(storage_uri: str) -> str:
    raw_uri, dataset_uri = f"{storage_uri}/raw/digits", f"{storage_uri}/datasets/digits-s3"
    write_labelled(storage_path(raw_uri, "aws_default"), range(30))
    settings = load_settings({"PIPELINE_STORAGE_URI": storage_uri})
    curate_uri(raw_uri, dataset_uri, load_taxonomy("digits"), CurationOptions(), settings=settings)
    return dataset_uri


def write_job_outputs(output_data_uri: str, dataset_uri: str) -> None:
    """What the training container would have uploaded with the model (/opt/ml/model/evaluation/): a correct answer
    for every test image."""
    dataset = storage_path(dataset_uri, "aws_default")
    test = load_from_disk(plain_uri(dataset), storage_options=fsspec_options(dataset))["test"]
    answers = [
        {"index": i, "label": label, "answer": f"this is a photo of {label}."} for i, label in enumerate(test["label"])
    ]
    out = storage_path(output_data_uri, "aws_default")
    (out / "eval_predictions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in answers))
    (out / "train_summary.json").write_text(json.dumps({"train_seconds": 1234.5, "global_step": 100}))


def test_sagemaker_backend_sends_the_training_request_and_a_rerun_attaches(
    sagemaker_airflow: AirflowRunner, moto: Moto
) -> None:
    storage = sagemaker_airflow.env["PIPELINE_STORAGE_URI"]
    dataset_uri = curate_on_s3(storage)
    conf = {"dataset_uri": dataset_uri, "hyperparameters": {"num_train_epochs": 3}, "min_accuracy": 0.5}
    sagemaker = moto.boto3_client("sagemaker")

    first = sagemaker_airflow.dags_test("finetune_llava", conf, logical_date=LOGICAL_DATE)
    (job,) = sagemaker.list_training_jobs()["TrainingJobSummaries"]
    request = sagemaker.describe_training_job(TrainingJobName=job["TrainingJobName"])
    name, output_path = request["TrainingJobName"], request["OutputDataConfig"]["S3OutputPath"]
    version = output_path.rsplit("/", 1)[1]
    models = f"s3://{moto.bucket}/pipeline/models"
    assert output_path == f"{models}/{version}" and request["OutputDataConfig"]["CompressionType"] == "NONE"
    image = request["AlgorithmSpecification"]["TrainingImage"]
    assert image == "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.8.0-gpu-py312"
    hp = request["HyperParameters"]
    assert hp["sagemaker_program"] == "launch.py" and hp["model_id"] == PRODUCTION_BASE_MODEL
    assert hp["sagemaker_submit_directory"] == f"{output_path}/source/sourcedir.tar.gz"
    assert (hp["num_train_epochs"], hp["learning_rate"], hp["bf16"]) == ("3", "2e-05", "true")
    (channel,) = request["InputDataConfig"]
    assert channel["ChannelName"] == "train"
    assert channel["DataSource"]["S3DataSource"]["S3Uri"] == f"s3://{moto.bucket}/pipeline/datasets/digits-s3/"
    checkpoints = request["CheckpointConfig"]["S3Uri"]
    assert checkpoints.startswith(f"{models}/checkpoints/digits-")  # per training key, not per version
    assert request["CheckpointConfig"]["LocalPath"] == "/opt/ml/checkpoints"
    assert hp["output_data_dir"] == "/opt/ml/model/evaluation"
    assert request["EnableManagedSpotTraining"] is True
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 8 * 3600, "MaxWaitTimeInSeconds": 16 * 3600}
    assert request["ResourceConfig"] == {"InstanceType": "ml.g5.48xlarge", "InstanceCount": 1, "VolumeSizeInGB": 300}
    assert request["RoleArn"] == sagemaker_airflow.env["PIPELINE_SAGEMAKER_ROLE_ARN"]
    assert storage_path(hp["sagemaker_submit_directory"], "aws_default").stat().st_size > 0  # uploaded first
    # moto completes jobs instantly and writes nothing: training succeeds, evaluation says clearly what is missing.
    # The model and evaluation prefix come from DescribeTrainingJob's ModelArtifacts.
    assert request["ModelArtifacts"]["S3ModelArtifacts"] == f"{output_path}/{name}/output/model/"
    predictions = f"{output_path}/{name}/output/model/evaluation/eval_predictions.jsonl"
    assert "Training plan: " in first.output and "checkpoints of 106 GB" in first.output  # sized and logged
    assert f"Creating SageMaker training job {name}" in first.output  # train (and its wait) succeeded:
    assert f"Training job {name} completed" in first.output
    assert f"no eval_predictions.jsonl at {predictions}" in first.output, first.output[-6000:]
    assert not first.succeeded

    write_job_outputs(f"{output_path}/{name}/output/model/evaluation", dataset_uri)
    second = sagemaker_airflow.dags_test("finetune_llava", conf, logical_date=LOGICAL_DATE)  # the same run again
    assert second.succeeded, second.output[-6000:]
    assert f"Attaching to training job {name}" in second.output
    (again,) = sagemaker.list_training_jobs()["TrainingJobSummaries"]  # exactly one job: none launched twice
    assert again["TrainingJobName"] == name and again["CreationTime"] == job["CreationTime"]

    registry = json.loads(storage_path(f"{models}/registry.json", "aws_default").read_text())
    assert registry["production"] == version
    entry = ModelVersion.from_dict(version, registry["versions"][version], "registry.json")
    assert entry.model_uri(sagemaker_airflow.env["PIPELINE_STORAGE_URI"]) == f"{output_path}/{name}/output/model/"
    metrics = json.loads(storage_path(f"{models}/{version}/metrics.json", "aws_default").read_text())
    assert (metrics["accuracy"], metrics["invalid_rate"], metrics["train_seconds"]) == (1.0, 0.0, 1234.5)
    ledger = storage_path(f"s3://{moto.bucket}/pipeline/costs/ledger/kind=training/{name}.parquet", "aws_default")
    assert ledger.exists()


def test_a_job_stopped_at_max_runtime_fails_with_its_checkpoints_and_a_new_run_resumes_them(
    sagemaker_airflow: AirflowRunner, moto: Moto, aws_failures: dict[str, Path]
) -> None:
    storage = sagemaker_airflow.env["PIPELINE_STORAGE_URI"]
    conf = {"dataset_uri": curate_on_s3(storage), "hyperparameters": {"num_train_epochs": 3}}
    sagemaker = moto.boto3_client("sagemaker")
    stop_file = aws_failures[STOP_FILE_ENV]
    stop_file.write_text("Training job reached the maximum runtime of 28800 seconds.")
    try:
        first = sagemaker_airflow.dags_test("finetune_llava", conf, logical_date=LOGICAL_DATE)
    finally:
        stop_file.unlink()
    assert not first.succeeded
    (job,) = sagemaker.list_training_jobs()["TrainingJobSummaries"]
    stopped = sagemaker.describe_training_job(TrainingJobName=job["TrainingJobName"])
    checkpoints = stopped["CheckpointConfig"]["S3Uri"]
    assert f"{job['TrainingJobName']} ended Stopped: Training job reached the maximum runtime" in first.output
    assert f"the checkpoints are kept at {checkpoints} and a new run" in first.output, first.output[-6000:]
    # what the stopped container had synced from /opt/ml/checkpoints: train.py resumes the newest complete one
    storage_path(f"{checkpoints}/checkpoint-300/trainer_state.json", "aws_default").write_text("{}")

    longer = conf | {"max_run_seconds": 16 * 3600, "max_wait_seconds": 32 * 3600}
    second = sagemaker_airflow.dags_test("finetune_llava", longer, logical_date="2026-11-02T00:00:00+00:00")
    jobs = {j["TrainingJobName"] for j in sagemaker.list_training_jobs()["TrainingJobSummaries"]}
    (new,) = jobs - {job["TrainingJobName"]}  # a new job (new run, new version) ...
    request = sagemaker.describe_training_job(TrainingJobName=new)
    assert request["CheckpointConfig"]["S3Uri"] == checkpoints  # ... on the Stopped job's checkpoints
    assert request["StoppingCondition"]["MaxRuntimeInSeconds"] == 16 * 3600
    assert (
        f"Creating SageMaker training job {new}" in second.output and f"Training job {new} completed" in second.output
    )
