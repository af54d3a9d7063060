"""The deployment plan, the endpoint record the classification DAG reads, and the smoke test against a real server."""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from support.registry import register
from tasks.common import storage
from tasks.common.settings import load_settings
from tasks.common.storage import MODELS, SERVING, storage_path
from tasks.model.taxonomy import load_taxonomy
from tasks.model.vision_tokens import PRODUCTION_GEOMETRY, TINY_GEOMETRY, ResizePolicy
from tasks.serving import deployment, local
from tasks.serving.client import EndpointSpec
from tests.unit.serving.test_client import FAST, NO_BUDGET, ScriptedServer, sized_image

TAXONOMY = load_taxonomy("digits")
PARAMS = {"endpoint_name": "llava-classifier", "model_version": None, "max_image_tokens": 1200, "smoke_image_uri": None}


@pytest.fixture
def settings(tmp_path):
    return load_settings({"PIPELINE_BACKEND": "local", "PIPELINE_STORAGE_URI": tmp_path.as_uri()})


def promote(settings, version: str, model_uri: str) -> None:
    models = storage_path(settings.storage_uri) / MODELS
    register(models, version, model_uri)


def test_the_plan_deploys_the_production_model(settings):
    promote(settings, "v1", "file:///models/v1/model")
    promote(settings, "v2", "file:///models/v2/model")
    plan = deployment.base_plan(settings, PARAMS)
    assert plan == {
        "backend": "local",
        "endpoint_name": "llava-classifier",
        "model_version": "v2",
        "model": "file:///models/v2/model",  # outside the storage root: kept absolute
        "model_uri": "file:///models/v2/model",
        "taxonomy": "digits",
        "prompt": TAXONOMY.prompt(),
        "vision_geometry": TINY_GEOMETRY.to_dict(),
        "max_image_tokens": 1200,
        "image_budget": "as trained",
        "calibration": None,  # registered without decision-token scores
        "smoke_image_uri": None,
    }
    assert deployment.base_plan(settings, PARAMS | {"model_version": "v2"})["model_version"] == "v2"
    with pytest.raises(LookupError, match="not the promoted one"):
        deployment.base_plan(settings, PARAMS | {"model_version": "v1"})


def test_the_budget_is_the_trained_one_unless_the_deploy_overrides_it(settings, caplog):
    register(storage_path(settings.storage_uri) / MODELS, "v1", "models/v1/model", max_image_tokens=800)
    as_trained = deployment.base_plan(settings, PARAMS | {"max_image_tokens": None})
    assert (as_trained["max_image_tokens"], as_trained["image_budget"]) == (800, "as trained")
    assert as_trained["model_uri"] == f"{settings.storage_uri}/models/v1/model"  # a reference under this root
    overridden = deployment.base_plan(settings, PARAMS | {"max_image_tokens": 1500})
    assert (overridden["max_image_tokens"], overridden["image_budget"]) == (1500, "override")
    assert "max_image_tokens=1500 overrides the 800 image tokens v1 was trained with" in caplog.text
    record = deployment.endpoint_record(local.plan(overridden, settings), "http://h:1")
    assert (record.image_budget, deployment.resize_policy(record).max_image_tokens) == ("override", 1500)


def test_no_promoted_model_and_bad_names_are_refused(settings):
    with pytest.raises(LookupError, match="no promoted model"):
        deployment.base_plan(settings, PARAMS)
    for name in ("-leading-hyphen", "under_score", "x" * 64, "", "team-x-recommender"):
        with pytest.raises(ValueError, match="endpoint name"):
            deployment.base_plan(settings, PARAMS | {"endpoint_name": name})


def test_record_round_trip_and_teardown(settings):
    promote(settings, "v1", "file:///models/v1/model")
    plan = local.plan(deployment.base_plan(settings, PARAMS), settings)
    root = deployment.serving_root(settings)
    assert deployment.current_endpoint(root) is None

    record = deployment.endpoint_record(plan, "http://127.0.0.1:8123")
    assert (record.url, record.model_version, record.model) == (
        "http://127.0.0.1:8123",
        "v1",
        "file:///models/v1/model",
    )
    path = deployment.publish_record(root, record)
    assert path == storage_path(settings.storage_uri) / SERVING / "endpoint.json"
    assert deployment.current_endpoint(root) == record

    assert deployment.remove_record(root, "another-endpoint") is False  # a teardown of another name keeps it
    assert deployment.remove_record(root, "llava-classifier") is True
    assert deployment.current_endpoint(root) is None and deployment.remove_record(root, "llava-classifier") is False


def test_record_to_spec_and_resize_policy(settings):
    promote(settings, "v1", "file:///models/v1/model")
    record = deployment.endpoint_record(local.plan(deployment.base_plan(settings, PARAMS), settings), "http://h:1")
    spec = deployment.endpoint_spec(replace(record, max_image_tokens=900), "aws_default")
    assert (spec.transport, spec.url) == ("openai_http", "http://h:1")
    assert deployment.resize_policy(replace(record, max_image_tokens=900)) == ResizePolicy(900, TINY_GEOMETRY)

    remote = replace(
        record, transport="sagemaker_runtime", url=None, supports_choice=True, vision_geometry=PRODUCTION_GEOMETRY
    )
    spec = deployment.endpoint_spec(remote, "prod_aws")
    assert (spec.transport, spec.endpoint_name, spec.aws_conn_id, spec.supports_choice) == (
        "sagemaker_runtime",
        "llava-classifier",
        "prod_aws",
        True,
    )
    assert deployment.resize_policy(replace(remote, max_image_tokens=None)).geometry == PRODUCTION_GEOMETRY


def test_smoke_image_is_a_fixed_digit_or_the_given_file(tmp_path, settings):
    image, label = deployment.smoke_image("", settings)
    assert image.startswith(b"\x89PNG") and label == "0"
    assert deployment.smoke_image("", settings) == (image, label)
    probe = Path(storage_path(settings.storage_uri).path) / "lobby.jpg"
    probe.parent.mkdir(parents=True, exist_ok=True)
    probe.write_bytes(b"jpeg bytes")
    assert deployment.smoke_image(probe.as_uri(), settings) == (b"jpeg bytes", None)


def test_smoke_image_outside_the_root_is_refused_before_reading(tmp_path_factory, settings):
    outside = tmp_path_factory.mktemp("outside") / "outside.jpg"
    outside.write_bytes(b"secret")
    with pytest.raises(storage.ContainmentError, match="smoke_image_uri"):
        deployment.smoke_image(outside.as_uri(), settings)
    with pytest.raises(storage.ContainmentError, match="smoke_image_uri"):
        deployment.smoke_image("file:///etc/passwd", settings)


@pytest.fixture
def server():
    srv = ScriptedServer()
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


def smoke(server: ScriptedServer, width: int, expected: str | None = None) -> str:
    spec = EndpointSpec("openai_http", url=server.url, **FAST)
    return deployment.smoke_test(
        spec, TAXONOMY, sized_image(width, 30), prompt="p", policy=NO_BUDGET, expected=expected
    )


def test_smoke_test_returns_the_label_right_or_not(server, caplog):
    caplog.set_level("INFO")
    assert smoke(server, 40, expected="3") == "3"
    assert smoke(server, 40, expected="7") == "3"  # a wrong label passes: it is logged, accuracy is not its job
    assert "differs from the expected '7'" in caplog.text
    assert server.bodies[-1]["messages"][0]["content"][0]["text"] == "p"  # the record's prompt, not a default


def test_smoke_test_fails_for_good_on_a_non_label_and_retryably_without_an_answer(server):
    from airflow.sdk.exceptions import AirflowFailException

    with pytest.raises(deployment.SmokeTestFailed, match="a cat, probably") as failed:
        smoke(server, 47)
    assert isinstance(failed.value, AirflowFailException)  # no task retry: the same model answers the same
    with pytest.raises(RuntimeError, match="no usable answer") as unanswered:
        smoke(server, 44)  # 503 on every attempt
    assert not isinstance(unanswered.value, AirflowFailException)


def test_local_state_lives_on_local_disk(settings, monkeypatch, tmp_path):
    assert local.state_path(settings) == tmp_path / SERVING / local.STATE_NAME
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "home"))
    on_s3 = dataclasses.replace(settings, storage_uri="s3://bucket/prefix")
    assert local.state_path(on_s3) == tmp_path / "home" / SERVING / local.STATE_NAME
    with pytest.raises(ValueError, match="local files"):
        local.model_dir("s3://bucket/prefix/models/v1/model")
    assert local.model_dir("file:///models/v1/model").as_posix() == "/models/v1/model"
