"""The local runtimes are found where `make` (or the local image) put them, and a missing one says how to build it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tasks.common.runtimes import REQUIREMENTS, RuntimeMissing, runtime_executable


def test_a_runtime_dir_elsewhere_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    python = tmp_path / "training" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("#!/bin/sh\n")
    python.chmod(0o755)
    monkeypatch.setenv("PIPELINE_RUNTIMES_DIR", str(tmp_path))
    assert runtime_executable("training") == str(python)


def test_a_missing_runtime_names_the_command_and_the_requirements(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PIPELINE_RUNTIMES_DIR", str(tmp_path))
    with pytest.raises(RuntimeMissing, match=r"run `make install`.*include/serving/local-requirements\.txt"):
        runtime_executable("serving")


@pytest.mark.parametrize("runtime", sorted(REQUIREMENTS))
def test_make_built_each_runtime_apart_from_airflow(runtime: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment the local backend runs its processes in has the runtime's libraries and no Airflow."""
    monkeypatch.delenv("PIPELINE_RUNTIMES_DIR", raising=False)
    probe = "import importlib.util as u; print(bool(u.find_spec('airflow')), bool(u.find_spec('transformers')))"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([runtime_executable(runtime), "-c", probe], capture_output=True, text=True, env=env)
    assert out.stdout.split() == ["False", "True"], out.stderr
