"""Promotion with an optional human review: what the reviewer is shown, and what a rejection records."""

from __future__ import annotations

import json

import pytest
from airflow.sdk.exceptions import AirflowSkipException

from tasks.common.settings import load_settings
from tasks.common.storage import storage_path
from tasks.training import steps
from tasks.training.evaluation import evaluate_version
from tasks.training.registry import read_registry
from tests.unit.training.test_evaluation import OUTCOME, plan  # noqa: F401 — a fixture: a local training plan

PARAMS = {"min_accuracy": 0.5, "tolerance": 0.01, "require_approval": True}
RUN = {"dag_id": "finetune_llava", "run_id": "manual__2026-12-01T10:00:00+00:00"}


@pytest.fixture
def evaluated(plan, tmp_path):  # noqa: F811
    """The plan's version evaluated on 10 digits, 9 right and one answer that is no label."""
    from tasks.model.taxonomy import load_taxonomy

    digits = load_taxonomy("digits")
    root = tmp_path / "models" / plan.version
    root.mkdir(parents=True)
    answers = [{"label": d, "answer": digits.answer(d)} for d in "012345678"] + [{"label": "9", "answer": "<b>?"}]
    (root / "eval_predictions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in answers))
    return plan, evaluate_version(plan, OUTCOME)


def settings(tmp_path):
    return load_settings({"PIPELINE_STORAGE_URI": tmp_path.as_uri()})


def test_the_reviewer_sees_the_verdict_metrics_per_class_scores_and_the_confusion_matrix(evaluated, tmp_path) -> None:
    training, metrics = evaluated
    subject, body = steps.review_request(settings(tmp_path), training.to_dict(), metrics, PARAMS, "http://af:8080/")
    assert subject == f"Promote {training.version}?"
    assert "The gate says: accuracy 0.9000 passes the gate" in body
    assert (
        f"| version | `{training.version}` | none yet |" in body
        and "| accuracy | 0.9000 | — |" in body
        and "| invalid_rate | 0.1000 | — |" in body
    )
    assert "| 9 | 0.000 | 0.000 | 0.000 | 1 |" in body  # per-class rows from metrics.json
    assert f"![confusion matrix of {training.version}](http://af:8080/costs-quality/models/{training.version}/" in body


def test_nobody_is_asked_when_approval_is_off_or_the_gate_refuses(evaluated, tmp_path) -> None:
    training, metrics = evaluated
    off = PARAMS | {"require_approval": False}
    assert steps.review_request(settings(tmp_path), training.to_dict(), metrics, off, "") is None
    strict = PARAMS | {"min_accuracy": 0.95}
    assert steps.review_request(settings(tmp_path), training.to_dict(), metrics, strict, "") is None


def test_a_rejected_review_registers_the_version_as_rejected_with_the_reviewer(evaluated, tmp_path) -> None:
    training, metrics = evaluated
    review = {"approved": False, "by": "alice", "reason": "Reject"}
    with pytest.raises(AirflowSkipException, match="rejected in review by alice"):
        steps.promote(settings(tmp_path), training.to_dict(), metrics, PARAMS, review, RUN)
    registry = read_registry(storage_path((tmp_path / "models").as_uri()))
    entry = registry["versions"][training.version]
    assert registry["production"] is None
    assert (entry["status"], entry["decision"], entry["run_id"]) == (
        "rejected",
        "rejected in review by alice",
        RUN["run_id"],
    )


@pytest.mark.parametrize("review", [{"approved": True, "by": "bob"}, {"approved": None, "by": None}])
def test_an_approved_or_unreviewed_version_goes_through_the_gate(evaluated, tmp_path, review) -> None:
    training, metrics = evaluated
    promoted = steps.promote(settings(tmp_path), training.to_dict(), metrics, PARAMS, review, RUN)
    registry = read_registry(storage_path((tmp_path / "models").as_uri()))
    assert promoted["version"] == registry["production"] == training.version
    assert registry["versions"][training.version]["dag_id"] == "finetune_llava"


def test_the_production_model_is_the_comparison_column(evaluated, tmp_path) -> None:
    training, metrics = evaluated
    steps.promote(settings(tmp_path), training.to_dict() | {"version": "v0"}, {"accuracy": 0.89}, PARAMS, {}, RUN)
    _, body = steps.review_request(settings(tmp_path), training.to_dict(), metrics, PARAMS, "")
    assert "| version | `" + training.version + "` | `v0` |" in body and "| accuracy | 0.9000 | 0.8900 |" in body


def test_evaluate_registers_a_candidate_whose_confusion_matrix_is_served_before_the_review(plan, tmp_path) -> None:  # noqa: F811
    """Issue 24: the Required Action's matrix was a 404 — the view serves registered versions only, and the
    candidate was registered by `promote`, after the approval. `evaluate` registers it now."""
    from dataclasses import asdict

    from tasks.dashboard.view_data import confusion_matrix_png
    from tasks.model.taxonomy import load_taxonomy

    digits = load_taxonomy("digits")
    root = tmp_path / "models" / plan.version
    root.mkdir(parents=True)
    answers = [{"label": d, "answer": digits.answer(d)} for d in "0123456789"]
    (root / "eval_predictions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in answers))
    metrics = steps.evaluate(settings(tmp_path), plan.to_dict(), asdict(OUTCOME), RUN)
    models = storage_path((tmp_path / "models").as_uri())
    entry = read_registry(models)["versions"][plan.version]
    assert (entry["status"], entry["run_id"], entry["metrics"]["accuracy"]) == ("candidate", RUN["run_id"], 1.0)
    assert metrics["accuracy"] == 1.0
    assert confusion_matrix_png(models, plan.version).startswith(b"\x89PNG")
    steps.promote(settings(tmp_path), plan.to_dict(), metrics, PARAMS, {"approved": True, "by": "bob"}, RUN)
    again = read_registry(models)["versions"][plan.version]
    assert again["status"] == "production" and again["created_at"] == entry["created_at"]


def test_who_reviewed_when_and_why_is_kept_in_the_registry(evaluated, tmp_path) -> None:
    training, metrics = evaluated
    review = {"approved": False, "by": "alice", "at": "2026-12-02T10:00:00+00:00", "comment": "class 9 is off"}
    with pytest.raises(AirflowSkipException, match="rejected in review by alice at 2026-12-02T10:00:00"):
        steps.promote(settings(tmp_path), training.to_dict(), metrics, PARAMS, review, RUN)
    registry = read_registry(storage_path((tmp_path / "models").as_uri()))
    assert registry["reviews"] == [
        {
            "version": training.version,
            "decision": "rejected",
            "by": "alice",
            "at": "2026-12-02T10:00:00+00:00",
            "comment": "class 9 is off",
        }
    ]
    assert registry["versions"][training.version]["decision"].endswith("at 2026-12-02T10:00:00+00:00: class 9 is off")


def test_the_request_names_real_tasks_and_says_a_paused_deploy_does_not_serve(evaluated, tmp_path) -> None:
    training, metrics = evaluated
    _, body = steps.review_request(settings(tmp_path), training.to_dict(), metrics, PARAMS, "")
    assert "promote_if_better" not in body and "the `promote` task" in body
    assert "only if that DAG is unpaused" in body
