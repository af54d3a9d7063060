"""Create-or-attach for SageMaker jobs run through the provider's operators (training, batch transform).

The provider, finding a job name taken, either launches a second billed job under a timestamped name or fails
(`action_if_job_exists`). A retry or rerun of the same DAG run must instead wait for the job its first try made.
Success is decided by the job's own final Describe status, never by the trigger's event alone (deferred success
while the job failed: apache/airflow#69042; Stopped not failing: #67291, and the transform hook's failed states
leave Stopped out altogether). A Failed or Stopped job fails the task without retries (a retry would attach to the
same ended job) with SageMaker's FailureReason.
"""

from __future__ import annotations

from typing import Any

from airflow.providers.amazon.aws.triggers.sagemaker import SageMakerTrigger
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from tasks.common import storage

WAITER_DELAY_S = 60
# The name each describe_<kind> call takes (describe), and that names a resource in a list or a create request.
NAME_FIELD = {
    "model": "ModelName",
    "endpoint_config": "EndpointConfigName",
    "endpoint": "EndpointName",
    "transform_job": "TransformJobName",
}


def describe(sm: Any, kind: str, name: str) -> dict[str, Any] | None:
    """describe_model / describe_endpoint_config / describe_endpoint / describe_transform_job, or None when it does
    not exist."""
    from botocore.exceptions import ClientError

    try:
        return getattr(sm, f"describe_{kind}")(**{NAME_FIELD[kind]: name})
    except ClientError as exc:
        # SageMaker reports a missing resource as a ValidationException "Could not find ..."
        if exc.response["Error"]["Code"] == "ValidationException" and "Could not find" in str(exc):
            return None
        raise


def s3_uri(uri: str) -> str:
    """A plain `s3://bucket/key` for SageMaker (no Airflow `conn_id@`); anything else cannot be a job input."""
    path = storage.storage_path(uri)
    if path.protocol != "s3":
        raise ValueError(f"SageMaker reads and writes S3 only; got {uri!r} (set PIPELINE_STORAGE_URI to s3://...)")
    return storage.plain_uri(path)


class AttachingJobMixin:
    """Mixed in before a provider SageMaker job operator (`class X(AttachingJobMixin, SageMakerTrainingOperator)`).

    The operator must be built with `check_if_job_exists=False, deferrable=True`; subclasses say which job kind it
    is and how to create, describe and wait for it, and what a Completed job returns.
    """

    job_type: str  # SageMakerTrigger's job_type: "Training" | "Transform"
    name_field: str  # "TrainingJobName" | "TransformJobName"
    status_field: str  # "TrainingJobStatus" | "TransformJobStatus"

    def _describe(self, name: str) -> dict[str, Any]:
        raise NotImplementedError

    def _create(self) -> None:
        raise NotImplementedError

    def _max_attempts(self) -> int:
        raise NotImplementedError

    def _completed(self, description: dict[str, Any]) -> Any:
        raise NotImplementedError

    def _ended_note(self, description: dict[str, Any]) -> str:
        """What the failure message adds for a job that ended Failed or Stopped (e.g. where its checkpoints are)."""
        return ""

    @property
    def _kind(self) -> str:
        return self.job_type.lower()

    def _job_name(self) -> str:
        return self.config[self.name_field]

    def execute(self, context: Any) -> Any:
        self.preprocess_config()
        name = self._job_name()
        if self._check_if_job_exists(name, self._describe):
            self.log.info("Attaching to %s job %s, created by an earlier try of this DAG run.", self._kind, name)
        else:
            self.log.info("Creating SageMaker %s job %s.", self._kind, name)
            self._create()
        description = self._describe(name)
        if description[self.status_field] in self.hook.non_terminal_states:
            self.log.info(
                "%s job %s is %s; waiting in the triggerer. Job logs: CloudWatch /aws/sagemaker/%sJobs.",
                self.job_type,
                name,
                description[self.status_field],
                self.job_type,
            )
            self.defer(
                trigger=SageMakerTrigger(
                    job_name=name,
                    job_type=self.job_type,
                    waiter_delay=self.check_interval,
                    waiter_max_attempts=self._max_attempts(),
                    aws_conn_id=self.aws_conn_id,
                    region_name=self.region_name,
                    verify=self.verify,
                    botocore_config=self.botocore_config,
                ),
                method_name="execute_complete",
            )
        return self._result(description)

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> Any:
        self.log.info("Trigger event: %s", event)
        return self._result(self._describe(self._job_name()))

    def _result(self, description: dict[str, Any]) -> Any:
        name, status = description[self.name_field], description[self.status_field]
        if status in self.hook.non_terminal_states:
            raise AirflowException(
                f"SageMaker {self._kind} job {name} is still {status} after the wait; it keeps running. "
                "Clear this task to attach to it and wait again."
            )
        if status != "Completed":
            reason = description.get("FailureReason") or "(SageMaker gave no FailureReason)"
            raise AirflowFailException(
                f"SageMaker {self._kind} job {name} ended {status}: {reason}{self._ended_note(description)}"
            )
        return self._completed(description)
