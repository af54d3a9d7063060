"""The one place where the deployment's backend decides what stands behind `prepare_training` and `train`.

Both backends give the DAG the same task ids and contracts: `prepare_training` readies what the trainer needs from
the plan; `train` runs include/training/launch.py and returns a TrainingOutcome dict. Locally that is a subprocess
on a tiny model; on SageMaker a training job, waited for in the triggerer.
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.sdk import task

from tasks.common.dag_defaults import SETTINGS
from tasks.training.plan import TrainingPlan

TRAINING_POOL = "sagemaker_training"  # concurrent trainings, local or SageMaker (config/airflow/pools.json)
log = logging.getLogger(__name__)

LOCAL_PREPARE_DOC = """
Builds the offline tiny LLaVA-NeXT (small Llama + CLIP, vocabulary from the dataset's prompt and answers) into
`models/<version>/base_model/`, or uses the `base_model` param's directory. Reuses a complete earlier build.
"""
LOCAL_TRAIN_DOC = """
Runs `include/training/launch.py` as a subprocess; its output streams into this log. `local_processes` >= 2 runs
accelerate + DeepSpeed ZeRO-3 on CPU. A retry resumes from the newest checkpoint in `models/<version>/checkpoints/`.
*Fails with `training exited with N`*: the log ends with the script's last lines.
"""
SAGEMAKER_PREPARE_DOC = """
Uploads `include/training/` as `models/<version>/source/sourcedir.tar.gz` and builds the CreateTrainingJob request
(image for the region, train channel = dataset, output/checkpoint paths, managed spot). Rendered in *Rendered
Template* of `train`.
"""
SAGEMAKER_TRAIN_DOC = """
Creates the SageMaker training job, or attaches to it when an earlier try of this run already did (the name is
deterministic per run: clearing or rerunning never launches a second billed job). Waits deferred.
*Failed/Stopped*: the task fails without retries and the log has SageMaker's FailureReason; a run with another
logical date (another job name) trains again. Job logs: CloudWatch `/aws/sagemaker/TrainingJobs/<job>`.
"""


def training_steps(plan: Any) -> Any:
    """`prepare_training` >> `train` for the configured backend; returns the train task's output (the outcome)."""
    if SETTINGS.is_local:
        return _train_locally(plan, _prepare_local(plan))
    from tasks.training.sagemaker import AttachingTrainingOperator

    return AttachingTrainingOperator(
        task_id="train",
        config=_prepare_sagemaker(plan),
        aws_conn_id=SETTINGS.aws_conn_id,
        pool=TRAINING_POOL,
        doc_md=SAGEMAKER_TRAIN_DOC,
    ).output


@task(task_id="prepare_training", doc_md=LOCAL_PREPARE_DOC)
def _prepare_local(plan: dict[str, Any]) -> str:
    from tasks.training.local import prepare_base_model

    return prepare_base_model(TrainingPlan.from_dict(plan))


@task(task_id="train", pool=TRAINING_POOL, doc_md=LOCAL_TRAIN_DOC)
def _train_locally(plan: dict[str, Any], base_model: str) -> dict[str, Any]:
    from tasks.training.local import train_locally

    return train_locally(TrainingPlan.from_dict(plan), base_model, log).to_dict()


@task(task_id="prepare_training", doc_md=SAGEMAKER_PREPARE_DOC)
def _prepare_sagemaker(plan: dict[str, Any]) -> dict[str, Any]:
    from tasks.common import storage
    from tasks.training.sagemaker import create_training_job_request, source_tarball, training_image_uri

    training = TrainingPlan.from_dict(plan)
    source = storage.storage_path(f"{training.model_root}/source/sourcedir.tar.gz", SETTINGS.aws_conn_id)
    storage.write_bytes_atomic(source, source_tarball())
    return create_training_job_request(
        training,
        role_arn=SETTINGS.sagemaker_role_arn,
        image_uri=training_image_uri(training.region),
        source_uri=str(source),
    )
