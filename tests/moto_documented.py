"""moto_server plus the SageMaker behaviour AWS documents and moto 5.2.5 does not model.

- CreateEndpoint on an existing name: moto silently replaces the endpoint; SageMaker refuses with
  `Cannot create already existing endpoint "<arn>".`, which sends the Amazon provider's
  SageMakerEndpointOperator(operation="create") down its update path (operators/sagemaker.py).
- UpdateEndpoint, which moto lacks: it takes the new config; or, while the file named by
  `FAKE_AWS_UPDATE_FAILURE_FILE` exists (the reason as its text), it fails the way AWS documents a failed update:
  the endpoint goes back to `InService` on the OLD config and DescribeEndpoint carries the reason ("If the status
  of the endpoint is Failed, or the status is InService but update operation fails, this provides the reason why it
  failed": SageMaker API reference, DescribeEndpoint FailureReason). boto's `endpoint_in_service` waiter, which
  the provider's deferrable endpoint trigger uses, calls that a success.

- `OutputDataConfig.CompressionType: NONE` uploads the model uncompressed ("Uncompressed model output", SageMaker
  developer guide), so `ModelArtifacts.S3ModelArtifacts` names a prefix, `<S3OutputPath>/<job>/output/model/`;
  moto always reports `.../output/model.tar.gz`.
- A training job that reaches `StoppingCondition.MaxRuntimeInSeconds` ends `Stopped` (secondary status
  `MaxRuntimeExceeded`): while the file named by `FAKE_AWS_TRAINING_STOP_FILE` exists, every new job ends so, with
  the file's text as its FailureReason (moto's jobs are always `Completed`).

Run as `python -m tests.moto_documented -H 127.0.0.1 -p PORT` (moto_server's arguments).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from moto.core.responses import ActionResult
from moto.sagemaker.exceptions import ValidationError
from moto.sagemaker.models import FakeTrainingJob, SageMakerModelBackend
from moto.sagemaker.responses import SageMakerResponse
from moto.server import main

FAILURE_FILE_ENV = "FAKE_AWS_UPDATE_FAILURE_FILE"
STOP_FILE_ENV = "FAKE_AWS_TRAINING_STOP_FILE"
FAILURE_TOGGLES = (FAILURE_FILE_ENV, STOP_FILE_ENV)


def update_endpoint(backend: SageMakerModelBackend, endpoint_name: str, endpoint_config_name: str) -> str:
    endpoint = backend.endpoints.get(endpoint_name)
    if endpoint is None:
        raise ValidationError(message=f"Could not find endpoint '{endpoint_name}'.")
    config = backend.describe_endpoint_config(endpoint_config_name)  # raises for an unknown config, as AWS does
    reason = _failure_reason()
    if reason:
        endpoint.failure_reason = reason  # back InService on the config it had
    else:
        endpoint.endpoint_config_name = endpoint_config_name
        endpoint.production_variants = endpoint._process_production_variants(config["ProductionVariants"])
        endpoint.failure_reason = None
    endpoint.endpoint_status = "InService"
    return endpoint.arn


def create_endpoint(self: SageMakerResponse) -> ActionResult:
    name = self._get_param("EndpointName")
    existing = self.sagemaker_backend.endpoints.get(name)
    if existing is not None:
        raise ValidationError(message=f'Cannot create already existing endpoint "{existing.arn}".')
    return _moto_create_endpoint(self)


def _failure_reason(env: str = FAILURE_FILE_ENV) -> str | None:
    path = os.environ.get(env)
    return Path(path).read_text().strip() if path and Path(path).exists() else None


def _respond(self: SageMakerResponse) -> ActionResult:
    name, config = self._get_param("EndpointName"), self._get_param("EndpointConfigName")
    return ActionResult({"EndpointArn": update_endpoint(self.sagemaker_backend, name, config)})


_moto_init = FakeTrainingJob.__init__


def _training_job(self: FakeTrainingJob, *args: Any, **kwargs: Any) -> None:
    _moto_init(self, *args, **kwargs)
    output = self.output_data_config
    if output.get("CompressionType") == "NONE":
        prefix = f"{output['S3OutputPath'].rstrip('/')}/{self.training_job_name}/output/model/"
        self.model_artifacts = {"S3ModelArtifacts": prefix}
    reason = _failure_reason(STOP_FILE_ENV)
    if reason:
        self.training_job_status, self.secondary_status = "Stopped", "MaxRuntimeExceeded"
        self.failure_reason = reason


FakeTrainingJob.__init__ = _training_job
_moto_create_endpoint = SageMakerResponse.create_endpoint
SageMakerResponse.create_endpoint = create_endpoint
SageMakerResponse.update_endpoint = _respond

if __name__ == "__main__":
    sys.exit(main())
