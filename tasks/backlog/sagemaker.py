"""The SageMaker backlog backend: Batch Transform jobs on the SageMaker Model that deploy_endpoint created.

The model is the one behind the deployed endpoint (the endpoint record's `config_name` names model and endpoint
config alike: tasks.serving.sagemaker), so a backlog is classified by exactly what serves the nightly traffic, with
the same container, weights and serving.properties. Jobs are created through the provider's
SageMakerTransformOperator made idempotent per job name (tasks.common.sagemaker_jobs).
"""

from __future__ import annotations

import json
from typing import Any

from airflow.providers.amazon.aws.operators.sagemaker import SageMakerTransformOperator
from airflow.sdk import TriggerRule, XComArg, task
from airflow.sdk.exceptions import AirflowFailException

from tasks.backlog import canary, records
from tasks.backlog.join import job_outcome
from tasks.backlog.plan import TransformJob
from tasks.common.sagemaker_jobs import WAITER_DELAY_S, AttachingJobMixin, s3_uri
from tasks.common.settings import Settings
from tasks.records.endpoint import EndpointRecord

MAX_WAIT_S = 24 * 3600  # per wait; a job still running then fails the try retryably, and the retry attaches again
SEED_SECONDS_PER_1000 = 674  # the seed's measurement on one ml.g5.xlarge endpoint at 32 requests in flight
MODEL_STARTUP_S = 600  # container start + weight download + vLLM warm-up per instance (the seed's deploy: 8.5 min)
TRANSFORM_DOC = """Creates the job's Batch Transform job, or attaches to it when an earlier try of this run already
did (the name is a pure function of the run and the images it classifies): a retry or rerun never starts a second
billed job. Waits deferred. **Failed/Stopped**: fails without retries with SageMaker's FailureReason; the files it
could not process have no `.out`: after a **Failed** job, `transform_records` sends their records again one per file
(tasks.backlog.records), and only the records that fail alone become `failed` rows in commit_day (a new run retries
them). Job logs: CloudWatch `/aws/sagemaker/TransformJobs/<job>`."""


class AttachingTransformOperator(AttachingJobMixin, SageMakerTransformOperator):
    """Create the transform job the config (a CreateTransformJob request) names, or attach to it; wait deferred;
    strict about how it ended. Returns the job's billing facts (tasks.backlog.join.job_outcome)."""

    job_type, name_field, status_field = "Transform", "TransformJobName", "TransformJobStatus"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(check_if_job_exists=False, deferrable=True, check_interval=WAITER_DELAY_S, **kwargs)

    def _describe(self, name: str) -> dict[str, Any]:
        return self.hook.describe_transform_job(name)

    def _create(self) -> None:
        self.hook.create_transform_job(self.config, wait_for_completion=False)

    def _max_attempts(self) -> int:
        return MAX_WAIT_S // self.check_interval + 1

    def _completed(self, description: dict[str, Any]) -> dict[str, Any]:
        self.serialized_transform = json.loads(json.dumps(description, default=repr))  # for OpenLineage
        self.serialized_model = {}
        outcome = job_outcome(description)
        self.log.info(
            "Transform job %s completed: %.0f s x %d instance(s) of %s.",
            outcome["name"],
            outcome["seconds"],
            outcome["instance_count"],
            outcome["instance_type"],
        )
        return outcome


class CanaryTransformOperator(AttachingTransformOperator):
    """The canary job (tasks.backlog.canary): created or attached like any transform job; once Completed, its
    output is read by the join before the task succeeds, so the large jobs downstream start only after it did."""

    def __init__(self, *, settings: Settings, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings

    def _completed(self, description: dict[str, Any]) -> dict[str, Any]:
        outcome = super()._completed(description)
        taxonomy = canary.deployed_taxonomy(self.settings)
        return {**outcome, **canary.check(self.config, self.settings.aws_conn_id, taxonomy)}


class SageMakerBacklog:
    default_instance_type = "ml.g5.xlarge"
    assumed_images_per_second = 1000 / SEED_SECONDS_PER_1000
    assumed_basis = f"the seed's {SEED_SECONDS_PER_1000} s per 1,000 images on one ml.g5.xlarge endpoint"
    startup_s = float(MODEL_STARTUP_S)

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.price_region = settings.region

    def model_name(self, record: EndpointRecord) -> str:
        if record.backend != "sagemaker" or not record.config_name:
            raise AirflowFailException(
                "the deployed endpoint has no SageMaker model (config_name) to run Batch Transform on: deploy_endpoint"
            )
        return str(record.config_name)

    def uri(self, storage_uri: str) -> str:
        """Plain s3://, keeping a prefix's trailing slash (a bare `.../input` would also match `.../input-2/`)."""
        return s3_uri(storage_uri) + ("/" if storage_uri.endswith("/") else "")

    def transform(self, requests: XComArg, pool: str) -> XComArg:
        """canary_request → canary (one small job, its output joined) → transform ×jobs → record_requests →
        transform_records ×(jobs that ended Failed): their unanswered records again, one per file."""
        large = AttachingTransformOperator.partial(
            task_id="transform", aws_conn_id=self.settings.aws_conn_id, pool=pool, doc_md=TRANSFORM_DOC
        ).expand(config=requests)
        self.canary(requests, pool) >> large
        follow_ups = self.record_requests(requests)
        large >> follow_ups
        return (
            AttachingTransformOperator.partial(
                task_id="transform_records",
                aws_conn_id=self.settings.aws_conn_id,
                pool=pool,
                doc_md=records.TRANSFORM_DOC,
            )
            .expand(config=follow_ups)
            .output
        )

    def record_requests(self, requests: XComArg) -> XComArg:
        conn_id = self.settings.aws_conn_id

        @task(task_id="record_requests", trigger_rule=TriggerRule.ALL_DONE, doc_md=records.DOC)
        def record_requests(configs: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
            from airflow.providers.amazon.aws.hooks.sagemaker import SageMakerHook

            from tasks.common.sagemaker_jobs import describe

            sm = SageMakerHook(aws_conn_id=conn_id).conn
            return records.record_requests(
                configs, conn_id, lambda r: describe(sm, "transform_job", r["TransformJobName"])
            )

        return record_requests(requests)

    def canary(self, requests: XComArg, pool: str) -> CanaryTransformOperator:
        conn_id = self.settings.aws_conn_id

        @task(task_id="canary_request", doc_md=canary.REQUEST_DOC)
        def canary_request(configs: list[dict[str, Any]]) -> dict[str, Any]:
            return canary.canary_request(configs, conn_id)

        return CanaryTransformOperator(
            task_id="canary",
            config=canary_request(requests),
            settings=self.settings,
            aws_conn_id=conn_id,
            pool=pool,
            doc_md=canary.DOC,
        )

    def outcome(self, job: TransformJob) -> dict[str, Any] | None:
        from airflow.providers.amazon.aws.hooks.sagemaker import SageMakerHook

        from tasks.common.sagemaker_jobs import describe

        return job_outcome(
            describe(SageMakerHook(aws_conn_id=self.settings.aws_conn_id).conn, "transform_job", job.name)
        )
