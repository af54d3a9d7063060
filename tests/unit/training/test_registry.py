"""The model registry index and its promotion gate."""

from __future__ import annotations

import json

import pytest

from tasks.common.storage import storage_path
from tasks.training.registry import REGISTRY_FILE, gate, production_model, promote_if_better, register_version


@pytest.fixture
def models(tmp_path):
    return storage_path(tmp_path.as_uri())


def add(models, version: str, accuracy: float, taxonomy: str = "hotel") -> None:
    entry = {"model_uri": f"s3://b/models/{version}/model/", "taxonomy": taxonomy, "prompt": "P",
             "metrics": {"accuracy": accuracy}}  # fmt: skip
    register_version(models, version, entry)


def promote(models, version: str):
    return promote_if_better(models, version, min_accuracy=0.9, tolerance=0.01)


@pytest.mark.parametrize(
    ("accuracy", "production", "passes"),
    [(0.95, None, True), (0.89, None, False), (0.945, 0.95, True), (0.93, 0.95, False), (0.99, 0.95, True)],
)
def test_gate(accuracy, production, passes):
    current = {"version": "v0", "accuracy": production} if production is not None else None
    assert gate(accuracy, current, min_accuracy=0.9, tolerance=0.01)[0] is passes


def test_first_version_above_the_minimum_goes_to_production(models):
    assert production_model(models) is None
    add(models, "v1", 0.93)
    decision = promote(models, "v1")
    assert decision.promoted and decision.previous is None
    prod = production_model(models)
    assert {k: prod[k] for k in ("version", "model_uri", "taxonomy", "prompt", "accuracy")} == {
        "version": "v1", "model_uri": "s3://b/models/v1/model/", "taxonomy": "hotel", "prompt": "P", "accuracy": 0.93,
    }  # fmt: skip


def test_a_worse_version_is_rejected_and_production_stays(models):
    add(models, "v1", 0.96)
    promote(models, "v1")
    add(models, "v2", 0.94)
    decision = promote(models, "v2")
    assert not decision.promoted and "worse than production v1" in decision.reason
    assert production_model(models)["version"] == "v1"
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
    assert production_model(models)["taxonomy"] == "digits"
