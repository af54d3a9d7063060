"""The declared serving runtime: what derives from it, and the training environment it is checked against."""

from __future__ import annotations

import json
import re
import subprocess
from importlib.metadata import version

import pytest

from tasks.common.runtimes import runtime_executable
from tasks.serving.client import EndpointSpec, build_request
from tasks.serving.config import ServingConfig, render_serving_properties
from tasks.serving.runtime import RUNTIME_FILE, serving_runtime
from tests.conftest import REPO_ROOT

TRAINING_REQUIREMENTS = REPO_ROOT / "include" / "training" / "requirements.txt"


@pytest.fixture
def vllm_08_runtime(tmp_path, monkeypatch):
    """The same file with the facts of a vLLM 0.8.x runtime: what a one-file change of the runtime looks like."""
    doc = json.loads(RUNTIME_FILE.read_text())
    doc["lmi"]["limit_mm_per_prompt"] = "key=value"
    doc["request"]["label_constraint"] = {"field": "guided_choice", "key": None}
    path = tmp_path / "runtime.json"
    path.write_text(json.dumps(doc))
    monkeypatch.setenv("PIPELINE_SERVING_RUNTIME", str(path))
    return path


def test_the_committed_runtime_is_lmi_async_with_vllm_0_23():
    runtime = serving_runtime()
    assert runtime.path == RUNTIME_FILE and runtime.tag == "0.36.0-lmi27.0.0-cu130"
    assert runtime.vllm_version.startswith("0.23.") and runtime.transformers_version == "5.9.0"
    assert runtime.mode_options["async_mode"] == "true"
    assert runtime.label_constraint(["a", "b"]) == {"structured_outputs": {"choice": ["a", "b"]}}
    assert runtime.format_mapping({"image": 1}) == '{"image":1}'


def test_option_syntax_and_request_field_follow_the_runtime_file(vllm_08_runtime):
    rendered = render_serving_properties(ServingConfig("s3://b/m/", limit_mm_per_prompt={"image": 1, "video": 0}))
    assert "option.limit_mm_per_prompt=image=1,video=0\n" in rendered
    spec = EndpointSpec("openai_http", url="http://127.0.0.1:1", supports_choice=True)
    body = build_request("p", b"jpeg", spec, ["a", "b"])
    assert body["guided_choice"] == ["a", "b"] and "structured_outputs" not in body


def test_an_unknown_option_syntax_is_refused(tmp_path, monkeypatch):
    doc = json.loads(RUNTIME_FILE.read_text())
    doc["lmi"]["limit_mm_per_prompt"] = "yaml"
    (tmp_path / "runtime.json").write_text(json.dumps(doc))
    monkeypatch.setenv("PIPELINE_SERVING_RUNTIME", str(tmp_path / "runtime.json"))
    with pytest.raises(ValueError, match="limit_mm_per_prompt"):
        render_serving_properties(ServingConfig("s3://b/m/", limit_mm_per_prompt={"image": 1}))


def test_every_section_of_the_runtime_says_where_its_facts_come_from():
    doc = json.loads(RUNTIME_FILE.read_text())
    for section in (doc, doc["vllm"], doc["transformers"], doc["lmi"], doc["request"], doc["djl_python"]):
        assert any(key.startswith("_") and "source" in key for key in section), section


def test_training_pins_are_the_local_training_runtime_and_the_runtime_files_training_version():
    """The job trains with what the local backend tested (local training runs in the environment built from the
    same file); the runtime file records which transformers saves the artifacts that
    tests/contract/test_artifact_parity.py loads with the runtime's own transformers."""
    pins = dict(
        re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)", line).groups()
        for line in TRAINING_REQUIREMENTS.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    probe = "import importlib.metadata as m, json, sys; print(json.dumps({n: m.version(n) for n in sys.argv[1:]}))"
    installed = subprocess.run(
        [runtime_executable("training"), "-c", probe, *pins], capture_output=True, text=True, check=True
    )
    assert pins and json.loads(installed.stdout) == pins
    assert {name: version(name) for name in pins} == pins  # the tests load models with the same libraries
    assert pins["transformers"] == json.loads(RUNTIME_FILE.read_text())["transformers"]["training"]
