"""The model registry index and its promotion gate."""

from __future__ import annotations

import json

import pytest

from support.registry import register
from tasks.common.storage import storage_path
from tasks.records.base import RecordError
from tasks.training.registry import REGISTRY_FILE, gate, production_model, promote_if_better


@pytest.fixture
def models(tmp_path):
    return storage_path(tmp_path.as_uri())


def add(models, version: str, accuracy: float, taxonomy: str = "hotel") -> None:
    model = f"s3://b/models/{version}/model/"
    register(models, version, model, taxonomy=taxonomy, metrics={"accuracy": accuracy}, promote=False)


def promote(models, version: str):
    return promote_if_better(models, version, min_accuracy=0.9, tolerance=0.01)


@pytest.mark.parametrize(
    ("accuracy", "production", "passes"),
    [(0.95, None, True), (0.89, None, False), (0.945, 0.95, True), (0.93, 0.95, False), (0.99, 0.95, True)],
)
def test_gate(models, accuracy, production, passes):
    current = None
    if production is not None:
        current = register(models, "v0", "m", metrics={"accuracy": production}, promote=False)
    assert gate(accuracy, current, min_accuracy=0.9, tolerance=0.01)[0] is passes


def test_first_version_above_the_minimum_goes_to_production(models):
    assert production_model(models) is None
    add(models, "v1", 0.93)
    decision = promote(models, "v1")
    assert decision.promoted and decision.previous is None
    prod = production_model(models)
    assert (prod.version, prod.model, prod.taxonomy, prod.accuracy, prod.status) == (
        "v1",
        "s3://b/models/v1/model/",
        "hotel",
        0.93,
        "production",
    )


def test_a_worse_version_is_rejected_and_production_stays(models):
    add(models, "v1", 0.96)
    promote(models, "v1")
    add(models, "v2", 0.94)
    decision = promote(models, "v2")
    assert not decision.promoted and "worse than production v1" in decision.reason
    assert production_model(models).version == "v1"
    doc = json.loads((models / REGISTRY_FILE).read_text())
    assert doc["versions"]["v2"]["status"] == "rejected" and doc["versions"]["v2"]["decision"] == decision.reason


def test_a_version_within_the_tolerance_replaces_production_and_retires_it(models):
    add(models, "v1", 0.96)
    promote(models, "v1")
    add(models, "v2", 0.955)
    decision = promote(models, "v2")
    assert decision.promoted and decision.previous == "v1"
    doc = json.loads((models / REGISTRY_FILE).read_text())
    assert doc["production"] == "v2" and doc["versions"]["v1"]["status"] == "retired"
    assert [h["version"] for h in doc["history"]] == ["v1", "v2"]


def test_promotion_and_registration_are_idempotent(models):
    add(models, "v1", 0.96)
    created = json.loads((models / REGISTRY_FILE).read_text())["versions"]["v1"]["created_at"]
    promote(models, "v1")
    add(models, "v1", 0.96)  # a rerun registers again
    assert promote(models, "v1").promoted
    doc = json.loads((models / REGISTRY_FILE).read_text())
    assert len(doc["history"]) == 1 and doc["versions"]["v1"]["created_at"] == created
    assert doc["versions"]["v1"]["status"] == "production"


def test_another_taxonomy_sets_no_bar_beyond_the_minimum(models):
    add(models, "hotel-v1", 0.99)
    promote(models, "hotel-v1")
    add(models, "digits-v1", 0.92, taxonomy="digits")
    assert promote(models, "digits-v1").promoted
    assert production_model(models).taxonomy == "digits"


def test_an_entry_written_before_the_typed_record_still_reads(models):
    """Today's registry.json as the code before ModelVersion wrote it: absolute URIs, no budget or fingerprint."""
    entry = {
        "status": "production",
        "model_uri": "file:///srv/llava/models/digits-1/model",
        "taxonomy": "digits",
        "prompt": "P",
        "dataset_uri": "file:///srv/llava/datasets/digits-1",
        "backend": "local",
        "job_name": "finetune-llava-x",
        "vision_geometry": {"tile_size": 32, "patch_size": 8, "grid_pinpoints": [[32, 32], [64, 64]]},
        "metrics": {"accuracy": 0.97},
        "dag_id": "finetune_llava",
        "run_id": "manual__1",
        "decision": "accuracy 0.9700 passes the gate",
        "created_at": "2026-11-30T10:00:00+00:00",
    }
    doc = {"production": "digits-1", "versions": {"digits-1": entry}, "history": []}
    (models / REGISTRY_FILE).write_text(json.dumps(doc))
    prod = production_model(models)
    assert prod.model_uri("file:///elsewhere") == "file:///srv/llava/models/digits-1/model"  # absolute: as it was
    assert (prod.max_image_tokens, prod.dataset_fingerprint, prod.accuracy) == (1200, None, 0.97)


def test_a_malformed_entry_names_the_file_the_version_and_the_field(models):
    doc = {"production": "v1", "versions": {"v1": {"model": "m", "taxonomy": 7}}, "history": []}
    (models / REGISTRY_FILE).write_text(json.dumps(doc))
    with pytest.raises(RecordError, match=r"registry.json: version 'v1': field 'taxonomy' must be str, found 7"):
        production_model(models)
