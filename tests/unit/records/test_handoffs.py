"""The facts curation decides reach serving through the typed records: curation report → DatasetRelease → plan →
registry (ModelVersion) → deploy plan → endpoint record (EndpointRecord) → the client's resize policy."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from support.endpoints import endpoint_record
from tasks.common.settings import load_settings
from tasks.common.storage import storage_path
from tasks.curation.curate import CurationOptions, curate_uri
from tasks.model.calibration import Calibration
from tasks.model.demo_data import write_labelled
from tasks.model.taxonomy import load_taxonomy
from tasks.model.vision_tokens import DEFAULT_MAX_IMAGE_TOKENS, TINY_GEOMETRY, ResizePolicy, image_tokens
from tasks.records.base import RecordError, resolve, storage_ref
from tasks.records.endpoint import EndpointRecord
from tasks.serving import deployment, local
from tasks.training.plan import find_dataset, plan_training
from tasks.training.registry import production_model, register_and_gate
from tasks.training.steps import training_backend
from tests.unit.training.test_plan import PARAMS, RUN_AFTER

# Above one tile's cost, and not the default: a budget only the curation run chose.
CURATED_BUDGET = image_tokens(64, 64, TINY_GEOMETRY)
DEPLOY_DEFAULTS = {"endpoint_name": "llava-classifier", "model_version": None, "smoke_image_uri": None}


@pytest.fixture
def settings(tmp_path):
    return load_settings({"PIPELINE_BACKEND": "local", "PIPELINE_STORAGE_URI": tmp_path.as_uri()})


def curate_and_register(settings, budget: int, metrics: dict | None = None) -> str:
    """Curate 40 digits at `budget`, plan a training on the result and register it as finetune_llava does."""
    root = storage_path(settings.storage_uri)
    write_labelled(root / "raw", range(40))
    dataset_uri = f"{settings.storage_uri}/datasets/digits-b{budget}"
    opts = CurationOptions(resize_policy=ResizePolicy(budget, TINY_GEOMETRY))
    curate_uri(f"{settings.storage_uri}/raw", dataset_uri, load_taxonomy("digits"), opts, settings=settings)
    release = find_dataset(dataset_uri, [], settings)
    plan = plan_training(
        training_backend(settings), settings, PARAMS, release, dag_id="finetune_llava", run_key="r", run_time=RUN_AFTER
    )
    metrics = metrics or {"accuracy": 1.0}
    gate = {"storage_uri": settings.storage_uri, "min_accuracy": 0.0, "tolerance": 1.0}
    decision = register_and_gate(root / "models", plan, metrics, **gate)
    assert decision.promoted
    return release.fingerprint


def test_serving_resizes_with_the_budget_chosen_at_curation(settings):
    assert CURATED_BUDGET != DEFAULT_MAX_IMAGE_TOKENS
    fingerprint = curate_and_register(settings, CURATED_BUDGET)
    version = production_model(storage_path(settings.storage_uri) / "models")
    assert (version.max_image_tokens, version.dataset_fingerprint) == (CURATED_BUDGET, fingerprint)
    assert version.dataset == f"datasets/digits-b{CURATED_BUDGET}"  # relative: the root can move
    deploy = local.plan(deployment.base_plan(settings, DEPLOY_DEFAULTS | {"max_image_tokens": None}), settings)
    record = deployment.endpoint_record(deploy, "http://127.0.0.1:9")
    assert (record.max_image_tokens, record.image_budget) == (CURATED_BUDGET, "as trained")
    assert deployment.resize_policy(record) == ResizePolicy(CURATED_BUDGET, TINY_GEOMETRY)


def test_the_calibration_evaluation_fitted_reaches_the_endpoint_record(settings):
    tokens = {label: 10 + i for i, label in enumerate("0123456789")}
    calibration = {"temperature": 1.7, "decision_tokens": tokens, "test_rows": 30, "before": None, "after": None}
    curate_and_register(settings, CURATED_BUDGET, {"accuracy": 1.0, "calibration": calibration})
    deploy = local.plan(deployment.base_plan(settings, DEPLOY_DEFAULTS | {"max_image_tokens": None}), settings)
    record = deployment.endpoint_record(deploy, "http://127.0.0.1:9")
    assert record.calibration == Calibration(decision_tokens=tokens, temperature=1.7)
    assert EndpointRecord.from_dict(json.loads(json.dumps(record.to_dict()))) == record


def test_an_endpoint_record_written_before_the_typed_record_still_reads(tmp_path):
    """serving/endpoint.json as deploy_endpoint wrote it before EndpointRecord: an absolute model_uri, no budget
    source (its budget was the deploy param's)."""
    doc = {
        "backend": "local",
        "endpoint_name": "llava-classifier",
        "transport": "openai_http",
        "url": "http://127.0.0.1:8123",
        "model_version": "digits-1",
        "model_uri": "file:///srv/models/digits-1/model",
        "taxonomy": "digits",
        "prompt": "P",
        "instance_type": "local",
        "instance_count": 1,
        "price_region": "local",
        "supports_choice": False,
        "max_image_tokens": 1200,
        "vision_geometry": TINY_GEOMETRY.to_dict(),
        "config_name": None,
        "deployed_at": "2026-11-30T10:00:00+00:00",
    }
    serving = storage_path(tmp_path.as_uri())
    (tmp_path / "endpoint.json").write_text(json.dumps(doc))
    record = deployment.current_endpoint(serving)
    assert record.model_uri("file:///elsewhere") == "file:///srv/models/digits-1/model"
    assert (record.image_budget, deployment.resize_policy(record).max_image_tokens) == ("as trained", 1200)
    (tmp_path / "endpoint.json").write_text(json.dumps(doc | {"supports_choice": "yes"}))
    with pytest.raises(RecordError, match=r"endpoint.json: field 'supports_choice' must be bool, found 'yes'"):
        deployment.current_endpoint(serving)
    (tmp_path / "endpoint.json").write_text(json.dumps(doc | {"schema_version": 2}))
    with pytest.raises(RecordError, match="schema_version 2 is not 1"):
        deployment.current_endpoint(serving)


def test_a_record_round_trips_through_json(settings):
    record = replace(endpoint_record("http://h:1"), model="models/v1/model", image_budget="override")
    assert EndpointRecord.from_dict(json.loads(json.dumps(record.to_dict()))) == record
    assert record.model_uri(settings.storage_uri) == f"{settings.storage_uri}/models/v1/model"


def test_storage_references_are_relative_inside_the_root_and_absolute_outside():
    root = "s3://bucket/llava"
    assert storage_ref("s3://bucket/llava/models/v1/model/", root) == "models/v1/model/"
    assert storage_ref("s3://bucket/llava-other/models/v1", root) == "s3://bucket/llava-other/models/v1"
    assert resolve("models/v1/model/", "s3://restored/llava") == "s3://restored/llava/models/v1/model/"
    assert resolve("s3://elsewhere/m", root) == "s3://elsewhere/m"
    with pytest.raises(RecordError, match="climbs out of the storage root"):
        resolve("models/../../etc", root)
