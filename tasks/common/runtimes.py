"""The local backend's heavy runtimes: the environments that stand in for production's containers.

In production the Airflow environment orchestrates and nothing heavier: training runs in the SageMaker training
container (it installs include/training/requirements.txt), serving in the DJL LMI container. The local backend keeps
the same split: `make` creates one environment per runtime under `.venvs/` (PIPELINE_RUNTIMES_DIR elsewhere, e.g.
the local Docker image), and the local training job and endpoint run their processes there, never in Airflow's.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from tasks.common.settings import REPO_ROOT

Runtime = Literal["training", "serving"]
# What creates each environment, for the error message: the Makefile's stamps list the same files.
REQUIREMENTS: dict[Runtime, str] = {
    "training": "include/training/requirements.txt",
    "serving": "include/serving/local-requirements.txt",
}


class RuntimeMissing(RuntimeError):
    """The environment a local runtime needs has not been created."""


def runtime_dir(runtime: Runtime) -> Path:
    """`<PIPELINE_RUNTIMES_DIR or <repo>/.venvs>/<runtime>`."""
    root = os.environ.get("PIPELINE_RUNTIMES_DIR", "").strip()
    return (Path(root) if root else REPO_ROOT / ".venvs") / runtime


def runtime_executable(runtime: Runtime, name: str = "python") -> str:
    """The path of `name` in the runtime's environment (its Python, or a console script such as `transformers`)."""
    path = runtime_dir(runtime) / "bin" / name
    if not os.access(path, os.X_OK):
        raise RuntimeMissing(
            f"the local {runtime} runtime has no {path}: run `make install` (it builds {runtime_dir(runtime)} "
            f"from {REQUIREMENTS[runtime]})"
        )
    return str(path)
