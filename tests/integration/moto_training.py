"""moto_server plus two things AWS documents for training jobs and moto 5.2.5 does not model.

- `OutputDataConfig.CompressionType: NONE` uploads the model uncompressed ("Uncompressed model output", SageMaker
  developer guide), so `ModelArtifacts.S3ModelArtifacts` names a prefix, `<S3OutputPath>/<job>/output/model/`;
  moto always reports `.../output/model.tar.gz`.
- A job that reaches `StoppingCondition.MaxRuntimeInSeconds` ends `Stopped` (secondary status
  `MaxRuntimeExceeded`): while the file named by `FAKE_AWS_TRAINING_STOP_FILE` exists, every new job ends so, with
  the file's text as its FailureReason (moto's jobs are always `Completed`).

Run as `python -m tests.integration.moto_training -H 127.0.0.1 -p PORT` (moto_server's arguments).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from moto.sagemaker.models import FakeTrainingJob
from moto.server import main

STOP_FILE_ENV = "FAKE_AWS_TRAINING_STOP_FILE"
_moto_init = FakeTrainingJob.__init__


def _init(self: FakeTrainingJob, *args: Any, **kwargs: Any) -> None:
    _moto_init(self, *args, **kwargs)
    output = self.output_data_config
    if output.get("CompressionType") == "NONE":
        prefix = f"{output['S3OutputPath'].rstrip('/')}/{self.training_job_name}/output/model/"
        self.model_artifacts = {"S3ModelArtifacts": prefix}
    stop = os.environ.get(STOP_FILE_ENV)
    if stop and Path(stop).exists():
        self.training_job_status, self.secondary_status = "Stopped", "MaxRuntimeExceeded"
        self.failure_reason = Path(stop).read_text().strip()


FakeTrainingJob.__init__ = _init

if __name__ == "__main__":
    sys.exit(main())
