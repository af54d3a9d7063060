"""The SageMaker training backend: the CreateTrainingJob request for a plan, its uploaded source, the provider's
SageMakerTrainingOperator made idempotent per job name and strict about how the job ended, and the billing facts of a
finished job."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from airflow.providers.amazon.aws.operators.sagemaker import SageMakerTrainingOperator
from airflow.sdk import XComArg, task
from airflow.sdk.exceptions import AirflowFailException

from tasks.common import storage
from tasks.common.archives import reproducible_tar_gz
from tasks.common.aws_images import ecr_image_uri
from tasks.common.sagemaker_jobs import WAITER_DELAY_S, AttachingJobMixin, s3_uri
from tasks.common.settings import INCLUDE_DIR, Settings
from tasks.costs.pricing import hourly_price
from tasks.model.vision_tokens import PRODUCTION_GEOMETRY
from tasks.records.dataset import DatasetRelease
from tasks.training.plan import (
    ENTRY_POINT,
    EVALUATION_DIR,
    TRAINING_SOURCE_DIR,
    Resources,
    TrainingOutcome,
    TrainingPlan,
    flag_value,
)
from tasks.training.sizing import size_training

TRAINING_IMAGE_TABLE = INCLUDE_DIR / "images" / "pytorch_training.json"
PRODUCTION_BASE_MODEL = "llava-hf/llava-v1.6-mistral-7b-hf"
# Its pinned Hub commit, sent as the model_revision hyperparameter (train.py's too: a test keeps them equal).
PRODUCTION_BASE_MODEL_REVISION = "52320fb52229c8d942b1dcb8b63b3dc8087bc83b"
SAGEMAKER_CHANNEL_DIR = "/opt/ml/input/data"
SAGEMAKER_CHECKPOINT_DIR = "/opt/ml/checkpoints"  # include/training/train.py's too (a test keeps them equal)
SAGEMAKER_MODEL_DIR = "/opt/ml/model"
VOLUME_SIZE_GB = 300  # the 7B base model, the trained copy and two ZeRO-3 checkpoints with optimizer state
# The seed's production recipe for a 7B model on GPUs (lr 2e-5, batch 1, warmup 0.03, bf16, gradient checkpointing)
# with 3 epochs instead of the seed's 20: 20 epochs of 10,000 curated images (7,000 train) are 17,500 steps, ~32 h
# at the declared 6 s/step of ml.g5.48xlarge, far beyond the seed's 8 h MaxRuntime, and a 7B model fitting one
# label per image overfits long before (LLaVA's own instruction tuning ran 1 epoch). 3 epochs of 10,000 images:
# 2,625 steps, ~5.6 h with loading, checkpoints, final save, test generation and train.py's label scoring of the
# 8,000 train/validation rows, inside the 8 h default MaxRuntime (`llava-pipelines plan-training --images 10000`).
# save_steps is not set here: tasks.training.sizing derives it from wall time (~30 min of steps) unless the run's
# hyperparameters set it.
SAGEMAKER_HYPERPARAMETERS: dict[str, Any] = {
    "learning_rate": 2e-5,
    "num_train_epochs": 3,
    "per_device_train_batch_size": 1,
    "warmup_ratio": 0.03,
    "bf16": True,
    "gradient_checkpointing": True,
}

PREPARE_DOC = """
Uploads `include/training/` as `models/<version>/source/sourcedir.tar.gz` and builds the CreateTrainingJob request
(image for the region, train channel = dataset, output/checkpoint paths, managed spot). Rendered in **Rendered
Template** of `train`.
"""
TRAIN_DOC = """
Creates the SageMaker training job, or attaches to it when an earlier try of this run already did (the name is
deterministic per run: clearing or rerunning never launches a second billed job). Waits deferred. On completion the
model's location is read from DescribeTrainingJob (`ModelArtifacts.S3ModelArtifacts`) and returned with the outcome.
**Runbook** — **Failed/Stopped**: the task fails without retries and the log has SageMaker's FailureReason; a run
with another logical date (another job name) trains again. **Stopped** (MaxRuntime reached): the checkpoints stay at
the URI the message names (`models/checkpoints/<training key>/`); a new run with the same dataset and training
config resumes from the newest of them — raise `max_run_seconds` (it is not part of the key). Job logs: CloudWatch
`/aws/sagemaker/TrainingJobs/<job>`.
"""


class SageMakerTraining:
    """LLaVA-NeXT 7B on a SageMaker training job (TRL SFT + DeepSpeed ZeRO-3 across the instance's GPUs)."""

    name = "sagemaker"
    geometry = PRODUCTION_GEOMETRY
    hyperparameters = SAGEMAKER_HYPERPARAMETERS
    default_base_model = PRODUCTION_BASE_MODEL

    shared_checkpoints = True  # per training key, so a rerun resumes what a Stopped job left (plan.training_key)

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def size(
        self, hyperparameters: dict[str, Any], resources: Resources, dataset: DatasetRelease, params: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Size the plan from the dataset's split counts and its taxonomy's labels (tasks.training.sizing; refuses
        one that cannot finish in MaxRuntime) and set the derived checkpoint interval unless the hyperparameters set
        one."""
        from tasks.model.taxonomy import load_taxonomy

        splits = dataset.splits
        size = size_training(
            hyperparameters,
            instance_type=resources.instance_type,
            instance_count=resources.instance_count,
            train_examples=int(splits.get("train", 0)),
            test_examples=int(splits.get("test", 0)),
            max_run_seconds=int(params["max_run_seconds"]),
            splits=splits,
            labels=len(load_taxonomy(dataset.taxonomy).labels),
        )
        return {**hyperparameters, "save_steps": size.save_steps}, size.to_dict()

    def resources(self, params: dict[str, Any]) -> Resources:
        spot = bool(params["spot"])
        wait = max(int(params["max_wait_seconds"]), int(params["max_run_seconds"])) if spot else 0
        return Resources(params["instance_type"], int(params["instance_count"]), spot, wait, self.settings.region)

    def artifact_uris(self, model_root: str, job_name: str) -> tuple[str, str]:
        """Where the model and the evaluation files are expected (`<S3OutputPath>/<job>/output/model/` with
        CompressionType NONE). Only an expectation: the finished job's DescribeTrainingJob says where they are
        (outcome_from_description), and that is what evaluation, the registry and promotion use."""
        model = f"{model_root}/{job_name}/output/model/"
        return model, located_output_uri(model)

    def train(self, plan: XComArg, pool: str) -> XComArg:
        settings = self.settings

        @task(task_id="prepare_training", doc_md=PREPARE_DOC)
        def prepare_training(plan: dict[str, Any]) -> dict[str, Any]:
            training = TrainingPlan.from_dict(plan)
            source = storage.storage_path(f"{training.model_root}/source/sourcedir.tar.gz", settings.aws_conn_id)
            storage.write_bytes_atomic(source, source_tarball())
            return create_training_job_request(
                training,
                role_arn=settings.sagemaker_role_arn,
                image_uri=training_image_uri(training.region),
                source_uri=str(source),
            )

        return AttachingTrainingOperator(
            task_id="train",
            config=prepare_training(plan),
            aws_conn_id=settings.aws_conn_id,
            pool=pool,
            doc_md=TRAIN_DOC,
        ).output


def training_image_uri(region: str) -> str:
    """The AWS PyTorch training container for `region` (see include/images/pytorch_training.json)."""
    return ecr_image_uri(TRAINING_IMAGE_TABLE, region)


def source_tarball(directory: Path = TRAINING_SOURCE_DIR) -> bytes:
    """`sourcedir.tar.gz` for the framework container: the script directory's files at the archive root, reproducible
    (unchanged scripts upload the same object)."""
    files = sorted(p for p in directory.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    return reproducible_tar_gz((p.relative_to(directory).as_posix(), p.read_bytes()) for p in files)


def create_training_job_request(plan: TrainingPlan, *, role_arn: str, image_uri: str, source_uri: str) -> dict:
    """The CreateTrainingJob request: a pure function of the plan, so a retry sends (or finds) the same job.

    The framework container downloads `sagemaker_submit_directory`, pip-installs its requirements.txt and runs
    `python launch.py --<hyperparameter> <value> ...`; the base model comes from the hub, or from an S3 prefix as an
    extra input channel.
    """
    if not role_arn:
        raise ValueError("PIPELINE_SAGEMAKER_ROLE_ARN is empty: SageMaker needs an execution role for the job")
    channels = {"train": plan.dataset_uri}
    model_id = plan.base_model
    if model_id.startswith("s3://"):
        channels["base_model"] = model_id
        model_id = f"{SAGEMAKER_CHANNEL_DIR}/base_model"
    hyperparameters = {key: flag_value(value) for key, value in plan.hyperparameters.items()}
    if model_id == PRODUCTION_BASE_MODEL:
        hyperparameters["model_revision"] = PRODUCTION_BASE_MODEL_REVISION
    hyperparameters |= {
        "model_id": model_id,
        "output_data_dir": f"{SAGEMAKER_MODEL_DIR}/{EVALUATION_DIR}",  # uploaded with the model: located_output_uri
        "sagemaker_program": ENTRY_POINT,
        "sagemaker_submit_directory": s3_uri(source_uri),
        "sagemaker_region": plan.region,
    }
    stopping: dict[str, int] = {"MaxRuntimeInSeconds": plan.max_run_seconds}
    if plan.spot:
        stopping["MaxWaitTimeInSeconds"] = plan.max_wait_seconds
    return {
        "TrainingJobName": plan.job_name,
        "RoleArn": role_arn,
        "AlgorithmSpecification": {"TrainingImage": image_uri, "TrainingInputMode": "File"},
        "HyperParameters": hyperparameters,
        "InputDataConfig": [
            {
                "ChannelName": name,
                "DataSource": {
                    "S3DataSource": {
                        "S3DataType": "S3Prefix",
                        "S3Uri": s3_uri(uri) + "/",  # a bare prefix would also match "<name>-other/"
                        "S3DataDistributionType": "FullyReplicated",
                    }
                },
            }
            for name, uri in channels.items()
        ],
        # Uncompressed: the model lands as files under <job>/output/model/, which DJL/vLLM serve from the prefix.
        "OutputDataConfig": {"S3OutputPath": s3_uri(plan.model_root), "CompressionType": "NONE"},
        "CheckpointConfig": {"S3Uri": s3_uri(plan.checkpoint_uri), "LocalPath": SAGEMAKER_CHECKPOINT_DIR},
        "ResourceConfig": {
            "InstanceType": plan.instance_type,
            "InstanceCount": plan.instance_count,
            "VolumeSizeInGB": VOLUME_SIZE_GB,
        },
        "StoppingCondition": stopping,
        "EnableManagedSpotTraining": plan.spot,
        "Tags": [{"Key": key, "Value": value} for key, value in plan.tags.items()],
    }


def located_model_uri(description: dict[str, Any]) -> str:
    """The model prefix of a completed job, as DescribeTrainingJob reports it (`ModelArtifacts.S3ModelArtifacts`),
    never rebuilt from the request. The request asks for CompressionType NONE, so it must be a prefix of files, as
    serving loads it; an archive (`.tar.gz`) cannot be served and fails here, before evaluation and promotion."""
    artifacts = (description.get("ModelArtifacts") or {}).get("S3ModelArtifacts")
    name = description.get("TrainingJobName")
    if not artifacts:
        raise AirflowFailException(f"training job {name} completed without ModelArtifacts.S3ModelArtifacts")
    if artifacts.endswith((".tar.gz", ".tgz")):
        compression = (description.get("OutputDataConfig") or {}).get("CompressionType", "GZIP")
        raise AirflowFailException(
            f"training job {name} left its model as an archive, {artifacts} (CompressionType {compression}); "
            "serving loads an uncompressed prefix: create the job with OutputDataConfig.CompressionType NONE"
        )
    return artifacts.rstrip("/") + "/"


def located_output_uri(model_uri: str) -> str:
    """Where eval_predictions.jsonl and train_summary.json are: `<model prefix>/evaluation`.

    train.py writes them to /opt/ml/model/evaluation/ (the `output_data_dir` hyperparameter), not to
    /opt/ml/output/data: "How Amazon SageMaker Processes Training Output" documents /opt/ml/output/data as uploaded
    as a single compressed tar object (`<job>/output/output.tar.gz`), and the API reference documents
    OutputDataConfig.CompressionType as "the model output compression type", so NONE is documented for
    /opt/ml/model only. Under the model dir they are uploaded uncompressed with the model, at the prefix
    DescribeTrainingJob reports; serving ignores the small subfolder (vLLM and DJL read the weight, config and
    tokenizer files at the root).
    """
    return f"{model_uri.rstrip('/')}/{EVALUATION_DIR}"


def outcome_from_description(description: dict[str, Any], region: str) -> TrainingOutcome:
    """Billing facts of a completed SageMaker job (a DescribeTrainingJob response), and where its outputs are.

    SageMaker folds the spot saving into BillableTimeInSeconds (AWS: savings = 1 - billable / training time), so
    those seconds are priced on demand. Without it (an emulator) the wall-clock time is priced at the table's spot
    rate: an estimate, never a silent $0 rate.
    """
    resources = description["ResourceConfig"]
    spot = bool(description.get("EnableManagedSpotTraining", False))
    started, ended = description.get("TrainingStartTime"), description.get("TrainingEndTime")
    wall = (ended - started).total_seconds() if started and ended else 0.0
    train_seconds = float(description.get("TrainingTimeInSeconds", wall))
    billed = description.get("BillableTimeInSeconds")
    instance_type = resources["InstanceType"]
    model_uri = located_model_uri(description)
    return TrainingOutcome(
        job_name=description["TrainingJobName"],
        region=region,
        instance_type=instance_type,
        instance_count=int(resources["InstanceCount"]),
        spot=spot,
        billable_seconds=float(billed if billed is not None else train_seconds),
        price_per_hour_usd=hourly_price(region, instance_type, "training", spot=spot and billed is None),
        train_seconds=train_seconds,
        model_uri=model_uri,
        output_uri=located_output_uri(model_uri),
    )


WAIT_SLACK_S = 1800  # beyond the job's own stopping condition: SageMaker needs time to upload and settle


class AttachingTrainingOperator(AttachingJobMixin, SageMakerTrainingOperator):
    """Create the training job the config names, or attach to it when an earlier try already did; wait deferred
    (tasks.common.sagemaker_jobs). Returns the TrainingOutcome as a dict, the same shape as the local trainer's."""

    job_type, name_field, status_field = "Training", "TrainingJobName", "TrainingJobStatus"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(check_if_job_exists=False, deferrable=True, check_interval=WAITER_DELAY_S, **kwargs)

    def _describe(self, name: str) -> dict[str, Any]:
        return self.hook.describe_training_job(name)

    def _create(self) -> None:
        self.hook.create_training_job(self.config, wait_for_completion=False, print_log=False)

    def _max_attempts(self) -> int:
        stopping = self.config["StoppingCondition"]
        longest = stopping.get("MaxWaitTimeInSeconds") or stopping["MaxRuntimeInSeconds"]
        return (int(longest) + WAIT_SLACK_S) // self.check_interval + 1

    def _ended_note(self, description: dict[str, Any]) -> str:
        """A Stopped job (MaxRuntimeInSeconds reached, or stopped by hand) leaves its checkpoints in S3; the
        checkpoint prefix is per training key, so the next run of the same training resumes them."""
        if description[self.status_field] != "Stopped":
            return ""
        checkpoints = (description.get("CheckpointConfig") or self.config.get("CheckpointConfig") or {}).get("S3Uri")
        if not checkpoints:
            return ""
        return (
            f"; the checkpoints are kept at {checkpoints} and a new run with the same dataset and training config "
            "(dataset, base model, hyperparameters other than save_steps, instance type and count) resumes from the "
            "newest of them: trigger it with a larger max_run_seconds"
        )

    def _completed(self, description: dict[str, Any]) -> dict[str, Any]:
        name = description["TrainingJobName"]
        self.serialized_training_data = json.loads(json.dumps(description, default=repr))  # for OpenLineage
        outcome = outcome_from_description(description, self.hook.conn_region_name)
        self.log.info(
            "Training job %s completed: %.0f billable s x %d instance(s) of %s (spot: %s); model at %s (from "
            "DescribeTrainingJob), evaluation files at %s.",
            name,
            outcome.billable_seconds,
            outcome.instance_count,
            outcome.instance_type,
            outcome.spot,
            outcome.model_uri,
            outcome.output_uri,
        )
        return outcome.to_dict()
