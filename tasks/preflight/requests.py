"""The AWS requests one pass of the pipelines makes, built by the pipelines' own functions, and the accesses they
imply (tasks.preflight.iam).

Names and paths come from the code that builds them for real runs (job names, model roots, checkpoint prefixes,
serving archives, `option.model_id`, transform input and output), so a change there changes what the IAM test and
`llava-pipelines preflight` demand. The parameter values are the DAGs' defaults; IAM depends on names and paths only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from tasks.common import storage
from tasks.common.sagemaker_jobs import s3_uri
from tasks.common.settings import Settings
from tasks.preflight import iam

STORAGE_PREFIXES = (
    storage.RAW,
    storage.DATASETS,
    storage.MODELS,
    storage.INCOMING,
    storage.PREDICTIONS,
    storage.COSTS,
    storage.SERVING,
    storage.BACKLOG,
    storage.REVIEW,
)
RUN_TIME = datetime(2026, 12, 1, tzinfo=UTC)
DAY = "2026-11-30"


@dataclass(frozen=True)
class Requests:
    training: dict[str, Any]  # CreateTrainingJob
    serving: dict[str, Any]  # the deploy plan: CreateModel, CreateEndpointConfig, CreateEndpoint, serving.properties
    transforms: list[dict[str, Any]]  # CreateTransformJob: a backlog job, its canary, its follow-up


def build_requests(settings: Settings) -> Requests:
    """One training job, one deployment of its model, and on that model a Batch Transform job with its canary and
    its follow-up for failed records."""
    from tasks.backlog.canary import canary_config
    from tasks.backlog.plan import (
        RequestFile,
        TransformResources,
        chunk_jobs,
        records_job,
        run_prefix,
        transform_request,
    )
    from tasks.model.taxonomy import load_taxonomy
    from tasks.model.vision_tokens import DEFAULT_MAX_IMAGE_TOKENS
    from tasks.nightly.partitions import Shard
    from tasks.records.dataset import DatasetRelease
    from tasks.serving import sagemaker as serving
    from tasks.serving.deployment import DEFAULT_ENDPOINT_NAME, DEFAULT_INSTANCE_TYPE
    from tasks.training.plan import plan_training
    from tasks.training.sagemaker import SageMakerTraining, create_training_job_request, training_image_uri

    taxonomy = load_taxonomy(settings.taxonomy)
    backend = SageMakerTraining(settings)
    dataset = DatasetRelease(
        dataset=f"{storage.DATASETS}/{taxonomy.name}-example",
        taxonomy=taxonomy.name,
        prompt=taxonomy.prompt(),
        fingerprint="0" * 64,
        splits={},  # not sized: the example plan's requests, not a real training
        max_image_tokens=DEFAULT_MAX_IMAGE_TOKENS,
        vision_tile_size=backend.geometry.tile_size,
    )
    training_params = {
        "base_model": None,
        "hyperparameters": {},
        "instance_type": "ml.g5.48xlarge",
        "instance_count": 1,
        "spot": True,
        "max_run_seconds": 8 * 3600,
        "max_wait_seconds": 16 * 3600,
        "local_processes": 1,
    }
    plan = plan_training(
        backend, settings, training_params, dataset, dag_id="finetune_llava", run_key="preflight", run_time=RUN_TIME
    )
    training = create_training_job_request(
        plan,
        role_arn=settings.sagemaker_role_arn,
        image_uri=training_image_uri(plan.region),
        source_uri=f"{plan.model_root}/source/sourcedir.tar.gz",
    )
    base = {
        "backend": "sagemaker",
        "endpoint_name": DEFAULT_ENDPOINT_NAME,
        "model_version": plan.version,
        "model_uri": plan.model_uri,
        "taxonomy": taxonomy.name,
        "prompt": plan.prompt,
        "vision_geometry": plan.vision_geometry,
        "max_image_tokens": None,
        "smoke_image_uri": None,
    }
    deploy_params = {
        "instance_type": DEFAULT_INSTANCE_TYPE,
        "instance_count": 1,
        "min_instances": 1,
        "max_instances": 2,
        "target_invocations_per_instance": 50,
        "enable_prefix_caching": False,
        "images_per_prompt": 1,
        "extra_options": {},
    }
    deployment = serving.plan(
        base,
        deploy_params,
        region=settings.region,
        role_arn=settings.sagemaker_role_arn,
        archive_prefix=f"{settings.storage_uri}/{storage.SERVING}/{DEFAULT_ENDPOINT_NAME}",
        current=None,
    )
    shard = asdict(Shard(f"{settings.storage_uri}/{storage.BACKLOG}/manifest.parquet", offset=0, count=500, index=0))
    prefix = run_prefix(f"{settings.storage_uri}/{storage.BACKLOG}", "classify_backlog", "preflight", DAY, DAY)
    [job] = chunk_jobs(
        [RequestFile(DAY, shard, "0" * 64)], prefix=prefix, run_key="preflight", identity={}, images_per_job=1000
    )
    transforms = [
        transform_request(
            j,
            TransformResources(DEFAULT_INSTANCE_TYPE, 1, 64),
            model_name=deployment["config_name"],
            max_record_bytes=200_000,
            uri=_plain,
        )
        for j in (job, records_job(job))
    ]
    transforms.insert(1, canary_config(transforms[0]))
    return Requests(training=training, serving=deployment, transforms=transforms)


def _plain(uri: str) -> str:
    return s3_uri(uri) + ("/" if uri.endswith("/") else "")


def required_accesses(settings: Settings, account_id: str) -> list[iam.Access]:
    """Every (principal, action, resource) the pipelines need in `account_id`, without duplicates, in order."""
    requests = build_requests(settings)
    region = settings.region
    accesses = [
        *iam.training_accesses(requests.training, account_id, region),
        *iam.serving_accesses(requests.serving, account_id, region),
        *(access for request in requests.transforms for access in iam.transform_accesses(request, account_id, region)),
        *iam.storage_accesses(settings, STORAGE_PREFIXES),
        *iam.alert_and_key_accesses(settings),
    ]
    return list(dict.fromkeys(accesses))
