"""Contract tests: the serving runtime's own engine code (include/serving/runtime.json) judges what we ship.

No GPU and no AWS here, so the runtime's vLLM and transformers are pip-installed from PyPI (`--no-deps --target`,
the package lists are the runtime file's `contract_*` entries) into `.cache/contract/<hash>/` once, and each check
runs in a subprocess whose path holds exactly those versions (torch and the other common packages come from the
project venv). Manual override, to point a run at other installs (e.g. an old runtime's): CONTRACT_VLLM_PATH,
CONTRACT_TRANSFORMERS_PATH (os.pathsep-separated folders) and CONTRACT_DJL_PYTHON (folder holding LMI's
properties.py and vllm_rb_properties.py); PIPELINE_SERVING_RUNTIME selects the runtime file itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tasks.serving.runtime import serving_runtime
from tests.conftest import REPO_ROOT

CACHE = REPO_ROOT / ".cache" / "contract"
PROBES = Path(__file__).parent / "probes"


def installed(packages: list[str]) -> Path:
    """A folder with exactly `packages` (pinned, no dependencies resolved), installed once and reused.

    Installed into a temporary sibling and renamed into place, so an interrupted install is never reused.
    """
    key = hashlib.sha256(json.dumps(sorted(packages)).encode()).hexdigest()[:16]
    target = CACHE / key
    if (target / "packages.json").is_file():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f"{key}.", dir=CACHE))
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile", "--disable-pip-version-check"]
    proc = subprocess.run([*pip, "--target", str(partial), *packages], capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        pytest.fail(f"pip install {' '.join(packages)} failed:\n{proc.stderr[-3000:]}")
    (partial / "packages.json").write_text(json.dumps(packages))
    try:
        partial.rename(target)
    except OSError:  # another session installed it meanwhile
        shutil.rmtree(partial, ignore_errors=True)
    return target


def _paths(override: str, packages: list[str]) -> list[str]:
    value = os.environ.get(override)
    return value.split(os.pathsep) if value else [str(installed(packages))]


@pytest.fixture(scope="session")
def runtime():
    return serving_runtime()


@pytest.fixture(scope="session")
def transformers_path(runtime) -> list[str]:
    return _paths("CONTRACT_TRANSFORMERS_PATH", runtime.doc["transformers"]["contract_packages"])


@pytest.fixture(scope="session")
def vllm_path(runtime, transformers_path) -> list[str]:
    """The runtime's transformers first (vLLM imports it), then its vLLM and the small packages vLLM imports."""
    vllm = runtime.doc["vllm"]
    return transformers_path + _paths("CONTRACT_VLLM_PATH", vllm["contract_packages"] + vllm["contract_deps"])


@pytest.fixture(scope="session")
def djl_python(runtime) -> str:
    return os.environ.get("CONTRACT_DJL_PYTHON") or str(REPO_ROOT / runtime.doc["djl_python"]["vendored"])


def run_probe(name: str, path: list[str], payload: dict, timeout: int = 600) -> dict:
    """Run probes/<name>.py with only `path` in front of the venv; it reads JSON on stdin and prints JSON last."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env |= {
        "PYTHONPATH": os.pathsep.join(path),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "VLLM_LOGGING_LEVEL": "ERROR",
    }
    proc = subprocess.run(
        [sys.executable, str(PROBES / f"{name}.py")],
        input=json.dumps(payload),
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=tempfile.gettempdir(),  # nothing of this repository on the path by accident
    )
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0 and lines, f"probe {name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return json.loads(lines[-1])
