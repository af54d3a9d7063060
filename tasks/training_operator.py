"""The provider's SageMakerTrainingOperator, made idempotent per job name and strict about how the job ended."""

from __future__ import annotations

import json
from typing import Any

from airflow.providers.amazon.aws.operators.sagemaker import SageMakerTrainingOperator
from airflow.providers.amazon.aws.triggers.sagemaker import SageMakerTrigger
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from tasks.training import outcome_from_description

WAITER_DELAY_S = 60
WAIT_SLACK_S = 1800  # beyond the job's own stopping condition: SageMaker needs time to upload and settle


class AttachingTrainingOperator(SageMakerTrainingOperator):
    """Create the training job the config names, or attach to it when an earlier try already did; wait deferred.

    The provider, finding the name taken, either launches a second billed job under a timestamped name or fails
    (`action_if_job_exists`). A retry or rerun of the same DAG run must instead wait for the job its first try made.
    Success is decided by the job's own final DescribeTrainingJob status, never by the trigger's event alone
    (deferred success while the job failed: apache/airflow#69042; Stopped not failing: #67291). A Failed or Stopped
    job fails the task without retries (a retry would attach to the same ended job) with SageMaker's FailureReason.
    Returns the TrainingOutcome as a dict, the same shape as the local trainer's.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(check_if_job_exists=False, deferrable=True, check_interval=WAITER_DELAY_S, **kwargs)

    def execute(self, context: Any) -> dict[str, Any]:
        self.preprocess_config()
        name = self.config["TrainingJobName"]
        if self._check_if_job_exists(name, self.hook.describe_training_job):
            self.log.info("Attaching to training job %s, created by an earlier try of this DAG run.", name)
        else:
            self.log.info("Creating SageMaker training job %s.", name)
            self.hook.create_training_job(self.config, wait_for_completion=False, print_log=False)
        description = self.hook.describe_training_job(name)
        if description["TrainingJobStatus"] in self.hook.non_terminal_states:
            self.log.info(
                "Training job %s is %s; waiting in the triggerer. Job logs: CloudWatch /aws/sagemaker/TrainingJobs.",
                name,
                description["TrainingJobStatus"],
            )
            self.defer(
                trigger=SageMakerTrigger(
                    job_name=name,
                    job_type="Training",
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

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> dict[str, Any]:
        self.log.info("Trigger event: %s", event)
        return self._result(self.hook.describe_training_job(self.config["TrainingJobName"]))

    def _max_attempts(self) -> int:
        stopping = self.config["StoppingCondition"]
        longest = stopping.get("MaxWaitTimeInSeconds") or stopping["MaxRuntimeInSeconds"]
        return (int(longest) + WAIT_SLACK_S) // self.check_interval + 1

    def _result(self, description: dict[str, Any]) -> dict[str, Any]:
        name, status = description["TrainingJobName"], description["TrainingJobStatus"]
        self.serialized_training_data = json.loads(json.dumps(description, default=repr))  # for OpenLineage
        if status in self.hook.non_terminal_states:
            raise AirflowException(
                f"SageMaker training job {name} is still {status} after the wait; it keeps running. "
                "Clear this task to attach to it and wait again."
            )
        if status != "Completed":
            reason = description.get("FailureReason") or "(SageMaker gave no FailureReason)"
            raise AirflowFailException(f"SageMaker training job {name} ended {status}: {reason}")
        outcome = outcome_from_description(description, self.hook.conn_region_name)
        self.log.info(
            "Training job %s completed: %.0f billable s x %d instance(s) of %s (spot: %s).",
            name,
            outcome.billable_seconds,
            outcome.instance_count,
            outcome.instance_type,
            outcome.spot,
        )
        return outcome.to_dict()
