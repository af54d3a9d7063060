"""serving.properties rendering, the model archive, the LMI image URI, and local-server bookkeeping without a server."""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
import tarfile

import pytest

from tasks.serving.config import (
    SERVING_PROPERTIES_TEMPLATE,
    ServingConfig,
    package_model_tar,
    render_serving_properties,
)
from tasks.serving.local_server import local_server_status, start_local_server, stop_local_server
from tasks.serving.runtime import djl_lmi_image_uri
from tests.conftest import REPO_ROOT

MODEL_URI = "s3://bucket/pipeline/models/v7/"


def properties(text: str) -> dict[str, str]:
    lines = text.splitlines()
    assert all("=" in line for line in lines), text
    return dict(line.split("=", 1) for line in lines)


def test_seed_defaults_in_the_runtimes_async_mode():
    assert render_serving_properties(ServingConfig(MODEL_URI)) == (
        "engine=Python\n"
        f"option.model_id={MODEL_URI}\n"
        "option.rolling_batch=disable\n"
        "option.async_mode=true\n"
        "option.entryPoint=djl_python.lmi_vllm.vllm_async_service\n"
        "option.tensor_parallel_degree=max\n"
        "option.max_rolling_batch_size=64\n"
        "option.model_loading_timeout=1200\n"
        "option.max_model_len=7200\n"
    )


def test_the_shipped_template_is_what_renders_the_file(tmp_path, monkeypatch):
    assert SERVING_PROPERTIES_TEMPLATE == REPO_ROOT / "include" / "serving" / "serving.properties"
    custom = tmp_path / "serving.properties"
    custom.write_text(
        "engine=Python\noption.trust_remote_code=false\n{% for k, v in options.items() %}{{ k }}:{{ v }}\n{% endfor %}"
    )
    monkeypatch.setattr("tasks.serving.config.SERVING_PROPERTIES_TEMPLATE", custom)
    rendered = render_serving_properties(ServingConfig(MODEL_URI))
    assert rendered.startswith("engine=Python\noption.trust_remote_code=false\nmodel_id:s3://")


def test_optional_vllm_settings():
    plain = properties(render_serving_properties(ServingConfig(MODEL_URI, enable_prefix_caching=None)))
    assert "option.enable_prefix_caching" not in plain and "option.limit_mm_per_prompt" not in plain
    props = properties(
        render_serving_properties(
            ServingConfig(
                MODEL_URI,
                enable_prefix_caching=True,
                limit_mm_per_prompt={"image": 1},
                extra_options={
                    "option.gpu_memory_utilization": 0.9,
                    "max_rolling_batch_size": 32,
                    "enforce_eager": False,
                },
            )
        )
    )
    assert props["option.enable_prefix_caching"] == "true"
    assert props["option.limit_mm_per_prompt"] == '{"image":1}'
    assert props["option.gpu_memory_utilization"] == "0.9"
    assert props["option.max_rolling_batch_size"] == "32"  # extras win over the fields
    assert props["option.enforce_eager"] == "false"


@pytest.mark.parametrize(
    "extra",
    [{"bad key": 1}, {"a=b": 1}, {"x": "line\noption.model_id=s3://elsewhere"}, {"x": ""}, {"x": " padded"}],
)
def test_values_that_would_corrupt_the_file_are_refused(extra):
    with pytest.raises(ValueError):
        render_serving_properties(ServingConfig(MODEL_URI, extra_options=extra))


def test_model_archive_holds_the_code_dir_and_is_reproducible():
    text = render_serving_properties(ServingConfig(MODEL_URI))
    archive = package_model_tar(text)
    assert archive == package_model_tar(text)
    assert archive != package_model_tar(text + "option.x=1\n")
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        assert tar.getnames() == ["code", "code/serving.properties"]
        assert tar.extractfile("code/serving.properties").read().decode() == text
    assert gzip.decompress(archive)  # plain gzip, as SageMaker expects


@pytest.mark.parametrize(
    ("region", "uri"),
    [
        ("us-east-1", "763104351884.dkr.ecr.us-east-1.amazonaws.com/djl-inference:0.36.0-lmi27.0.0-cu130"),
        ("eu-south-1", "692866216735.dkr.ecr.eu-south-1.amazonaws.com/djl-inference:0.36.0-lmi27.0.0-cu130"),
        ("cn-north-1", "727897471807.dkr.ecr.cn-north-1.amazonaws.com.cn/djl-inference:0.36.0-lmi27.0.0-cu130"),
    ],
)
def test_djl_lmi_image_uri(region, uri):
    assert djl_lmi_image_uri(region) == uri


def test_unknown_region_is_refused():
    with pytest.raises(ValueError, match="mars-1"):
        djl_lmi_image_uri("mars-1")


def test_status_and_stop_without_a_server(tmp_path):
    state = tmp_path / "server.json"
    assert local_server_status(state) is None
    assert stop_local_server(state) is False
    state.write_text("{not json")
    assert local_server_status(state) is None


def test_a_stale_record_is_not_trusted_and_is_cleaned_up(tmp_path):
    """A recorded pid that has exited (or been reused by another process) is never signalled."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    proc.wait()
    state = tmp_path / "server.json"
    record = {
        "pid": proc.pid,
        "port": 9,
        "model_dir": str(tmp_path),
        "started_at": "2026-01-01T00:00:00+00:00",
        "create_time": 0.0,
        "log_path": str(tmp_path / "server.log"),
    }
    state.write_text(json.dumps(record))
    assert local_server_status(state) is None
    assert stop_local_server(state) is False and not state.exists()


def test_start_refuses_a_directory_without_a_model(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        start_local_server(tmp_path, tmp_path / "server.json")
