"""Held-out metrics with the strict answer parser, the confusion matrix plot, and what evaluation writes."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from datetime import UTC, datetime

import numpy as np
import pytest
from airflow.sdk.exceptions import AirflowFailException

from tasks.common.settings import load_settings
from tasks.model.taxonomy import Taxonomy, load_taxonomy
from tasks.training.calibration import DECISION_TOKENS_FILE
from tasks.training.evaluation import compute_metrics, confusion_matrix_png, evaluate_version
from tasks.training.mislabels import SCORES_FILE
from tasks.training.plan import TrainingOutcome, plan_training
from tasks.training.steps import training_backend
from tests.unit.training.test_plan import LOCAL_DATASET

TAXONOMY = Taxonomy("rooms", ("Room", "Terrace/Patio", "Spa"))


def rows(*pairs: tuple[str, str | None]) -> list[dict]:
    return [{"index": i, "label": label, "answer": answer} for i, (label, answer) in enumerate(pairs)]


def test_accuracy_per_class_and_invalid_answers():
    metrics = compute_metrics(
        rows(
            ("Room", "this is a photo of Room."),
            ("Room", "This is a photo of a room"),  # case, article and missing period are fine
            ("Room", "this is a photo of Spa."),
            ("Spa", "this is a photo of Spa."),
            ("Terrace/Patio", "this is a photo of Terrace/Patio."),
            ("Terrace/Patio", "Terrace"),  # a bare word is not an answer
            ("Spa", "this is a photo of Spa or Room."),  # a label merely mentioned is not an answer
            ("Spa", None),
        ),
        TAXONOMY,
    )
    assert metrics["n_test"] == 8 and metrics["n_invalid"] == 3
    assert metrics["accuracy"] == pytest.approx(4 / 8) and metrics["invalid_rate"] == pytest.approx(3 / 8)
    room, spa, patio = (metrics["per_class"][label] for label in ("Room", "Spa", "Terrace/Patio"))
    assert room == {"precision": 1.0, "recall": pytest.approx(2 / 3), "f1": pytest.approx(0.8), "support": 3}
    assert (spa["precision"], spa["recall"], spa["support"]) == (0.5, pytest.approx(1 / 3), 3)
    assert (patio["precision"], patio["recall"]) == (1.0, 0.5)
    cm = metrics["confusion_matrix"]
    assert cm["columns"] == ["Room", "Terrace/Patio", "Spa", "invalid"]
    assert cm["counts"] == [[2, 0, 1, 0], [0, 1, 0, 1], [0, 0, 1, 2]]


def test_a_class_never_predicted_has_zero_precision_not_an_error():
    metrics = compute_metrics(rows(("Room", "this is a photo of Spa.")), TAXONOMY)
    assert metrics["per_class"]["Room"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert metrics["macro_f1"] == 0.0  # averaged over labels present in the test split


def test_unknown_truth_labels_and_empty_predictions_are_errors():
    with pytest.raises(ValueError, match="Kitchen"):
        compute_metrics(rows(("Kitchen", "this is a photo of Room.")), TAXONOMY)
    with pytest.raises(ValueError, match="no test predictions"):
        compute_metrics([], TAXONOMY)


def test_confusion_matrix_png():
    metrics = compute_metrics(rows(("Room", "this is a photo of Room."), ("Spa", "?")), TAXONOMY)
    assert confusion_matrix_png(metrics, "v1").startswith(b"\x89PNG\r\n\x1a\n")


@pytest.fixture
def plan(tmp_path):
    settings = load_settings({"PIPELINE_STORAGE_URI": tmp_path.as_uri()})
    dataset = replace(LOCAL_DATASET, dataset="datasets/d", taxonomy="digits", prompt="P")
    params = {
        "base_model": "",
        "hyperparameters": {},
        "instance_type": "",
        "instance_count": 1,
        "spot": False,
        "max_run_seconds": 60,
        "max_wait_seconds": 60,
        "local_processes": 1,
    }
    return plan_training(
        training_backend(settings),
        settings,
        params,
        dataset,
        dag_id="d",
        run_key="r",
        run_time=datetime(2026, 1, 1, tzinfo=UTC),
    )


OUTCOME = TrainingOutcome("job", "local", "local", 1, False, 80.0, 0.115, 75.0)


def test_evaluate_version_writes_metrics_and_plot_beside_the_model(plan, tmp_path):
    root = tmp_path / "models" / plan.version
    root.mkdir(parents=True)
    answers = [{"label": d, "answer": load_taxonomy("digits").answer(d)} for d in "0123456789"]
    (root / "eval_predictions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in answers))
    (root / "train_summary.json").write_text(json.dumps({"train_seconds": 71.5, "global_step": 400}))
    small = evaluate_version(plan, OUTCOME)
    written = json.loads((root / "metrics.json").read_text())
    assert {"accuracy", "per_class", "invalid_rate", "n_test", "train_seconds"} <= set(written)
    assert (written["accuracy"], written["n_test"], written["train_seconds"], written["global_step"]) == (
        1,
        10,
        71.5,
        400,
    )
    assert (root / "confusion_matrix.png").read_bytes().startswith(b"\x89PNG")
    assert "per_class" not in small and small["accuracy"] == 1.0  # the XCom copy stays small


def test_missing_predictions_fail_clearly_without_retries(plan):
    with pytest.raises(AirflowFailException, match=f"no eval_predictions.jsonl at {plan.predictions_uri}"):
        evaluate_version(plan, OUTCOME)


def test_likely_mislabels_go_to_the_model_folder_never_into_the_labels(plan, tmp_path):
    root = tmp_path / "models" / plan.version
    root.mkdir(parents=True)
    (root / "eval_predictions.jsonl").write_text(json.dumps({"label": "3", "answer": "this is a photo of 3."}) + "\n")
    dataset = tmp_path / "datasets" / "d"
    dataset.mkdir(parents=True)
    kept = [{"path": f"{label}/img-{i}.png", "sha256": f"s{i}", "label": label} for i, label in enumerate("3381")]
    (dataset / "curation_report.json").write_text(json.dumps({"kept": kept}))
    confident = {"3": {"3": 0.9, "8": 0.1}, "8": {"3": 0.1, "8": 0.9}}
    rows = [
        {"split": "train", "index": i, "sha256": f"s{i}", "label": label, "probabilities": confident[label]}
        for i, label in enumerate("338")
    ]
    rows[1]["probabilities"] = {"3": 0.05, "8": 0.95}  # given 3, the model is sure it is an 8
    (root / "label_scores.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))

    assert evaluate_version(plan, OUTCOME)["mislabel_flags"] == 1
    [flag] = [json.loads(line) for line in (root / "label_flags.jsonl").read_text().splitlines()]
    assert flag | {"given_threshold": 0, "suggested_threshold": 0} == {
        "schema": "label_flag/1",
        "sha256": "s1",
        "path": "3/img-1.png",
        "split": "train",
        "index": 1,
        "given_label": "3",
        "given_probability": 0.05,
        "given_threshold": 0,
        "suggested_label": "8",
        "suggested_probability": 0.95,
        "suggested_threshold": 0,
        "model_version": plan.version,
        "dataset_uri": plan.dataset_uri,
    }
    assert json.loads((dataset / "curation_report.json").read_text())["kept"] == kept  # labels untouched


def test_a_run_that_scored_no_split_has_no_flags_file(plan, tmp_path):
    root = tmp_path / "models" / plan.version
    root.mkdir(parents=True)
    (root / "eval_predictions.jsonl").write_text(json.dumps({"label": "3", "answer": "this is a photo of 3."}) + "\n")
    assert evaluate_version(plan, OUTCOME)["mislabel_flags"] is None
    assert not (root / "label_flags.jsonl").exists()


def test_the_scores_file_name_is_the_training_scripts():
    """train.py ships alone: its copy of the name is checked against the reader's."""
    from tests.unit.training.test_shipped_script import train

    assert train.SCORES_FILE == SCORES_FILE


def decision_rows(split: str, n: int, seed: int) -> list[dict]:
    """Scores of an over-confident two-digit model: log-probabilities 3x too sharp for how often it is right."""
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(n):
        margin = rng.normal(0, 1.5)
        truth = "3" if rng.random() < 1 / (1 + math.exp(-margin)) else "8"
        logits = {"3": 3 * margin / 2, "8": -3 * margin / 2}
        norm = math.log(sum(math.exp(v) for v in logits.values()))
        scores = {k: v - norm for k, v in logits.items()}
        probabilities = {"3": 0.5, "8": 0.5}  # the full-answer scores (mislabel flags): not what is calibrated
        rows.append(
            {
                "split": split,
                "index": index,
                "sha256": f"{split}{index}",
                "label": truth,
                "probabilities": probabilities,
            }
            | {"decision_logprobs": scores}
        )
    return rows


def test_calibration_is_fitted_on_validation_checked_on_test_and_drawn(plan, tmp_path):
    root = tmp_path / "models" / plan.version
    root.mkdir(parents=True)
    (root / "eval_predictions.jsonl").write_text(json.dumps({"label": "3", "answer": "this is a photo of 3."}) + "\n")
    rows = decision_rows("validation", 600, 1) + decision_rows("test", 600, 2)
    (root / "label_scores.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (root / "decision_tokens.json").write_text(json.dumps({"3": 13, "8": 18}))

    report = evaluate_version(plan, OUTCOME)["calibration"]
    assert report["temperature"] == pytest.approx(3.0, rel=0.25)  # the sharpening the scores were made with
    assert report["fitted_on"] == {"split": "validation", "rows": 600} and report["test_rows"] == 600
    assert report["after"]["ece"] < report["before"]["ece"] and report["after"]["nll"] < report["before"]["nll"]
    assert 0.5 < report["after"]["auroc"] <= 1 and report["accuracy_top_80pct"] >= report["after"]["accuracy"]
    assert report["decision_tokens"] == {"3": 13, "8": 18} and len(report["risk_coverage"]) == 20
    assert (root / "risk_coverage.png").read_bytes().startswith(b"\x89PNG")
    assert json.loads((root / "metrics.json").read_text())["calibration"] == report


def test_without_decision_tokens_there_is_no_calibration(plan, tmp_path):
    root = tmp_path / "models" / plan.version
    root.mkdir(parents=True)
    (root / "eval_predictions.jsonl").write_text(json.dumps({"label": "3", "answer": "this is a photo of 3."}) + "\n")
    (root / "label_scores.jsonl").write_text(json.dumps(decision_rows("test", 1, 0)[0]) + "\n")
    assert evaluate_version(plan, OUTCOME)["calibration"] is None  # two labels shared a first token: no tokens file
    assert not (root / "risk_coverage.png").exists()


def test_the_decision_tokens_file_name_is_the_training_scripts():
    from tests.unit.training.test_shipped_script import train

    assert train.DECISION_TOKENS_FILE == DECISION_TOKENS_FILE
