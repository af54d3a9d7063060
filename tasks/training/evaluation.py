"""Held-out metrics from the training script's raw answers, parsed by THE answer parser (tasks.model.taxonomy).

An answer that is not exactly "this is a photo of <label>." is invalid: it counts as wrong for accuracy and recall,
has its own column in the confusion matrix, and its rate is reported, so "invalid" means here what it means in
nightly classification.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from airflow.sdk import ObjectStoragePath
from airflow.sdk.exceptions import AirflowFailException

from tasks.common import plots, storage
from tasks.common.storage import CURATION_REPORT as REPORT_NAME
from tasks.model.taxonomy import Taxonomy, load_taxonomy
from tasks.training import calibration
from tasks.training.mislabels import FLAGS_FILE, SCORES_FILE, flag_mislabels
from tasks.training.plan import PREDICTIONS_FILE, TrainingOutcome, TrainingPlan

log = logging.getLogger(__name__)
INVALID = "invalid"
METRICS_FILE = "metrics.json"
CONFUSION_MATRIX_FILE = "confusion_matrix.png"


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0


def compute_metrics(rows: Iterable[dict[str, Any]], taxonomy: Taxonomy) -> dict[str, Any]:
    """Accuracy, invalid-answer rate, per-class precision/recall/F1 and the confusion matrix.

    `rows` are eval_predictions.jsonl records with `label` (the truth) and `answer` (the raw generation).
    Confusion matrix rows are true labels in taxonomy order; columns are the same labels plus "invalid".
    """
    labels = list(taxonomy.labels)
    index = {label: i for i, label in enumerate(labels)}
    matrix = [[0] * (len(labels) + 1) for _ in labels]
    n = invalid = 0
    for row in rows:
        truth = taxonomy.match(row["label"])
        if truth is None:
            raise ValueError(f"test row {row.get('index')} has label {row['label']!r}, not in taxonomy {taxonomy.name}")
        predicted = taxonomy.parse_answer(row.get("answer"))
        invalid += predicted is None
        matrix[index[truth]][len(labels) if predicted is None else index[predicted]] += 1
        n += 1
    if n == 0:
        raise ValueError("no test predictions to evaluate")
    per_class = {}
    for i, label in enumerate(labels):
        tp, support = matrix[i][i], sum(matrix[i])
        predicted_as = sum(matrix[r][i] for r in range(len(labels)))
        precision, recall = _ratio(tp, predicted_as), _ratio(tp, support)
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    present = [m for m in per_class.values() if m["support"]]
    return {
        "accuracy": sum(matrix[i][i] for i in range(len(labels))) / n,
        "invalid_rate": invalid / n,
        "macro_f1": sum(m["f1"] for m in present) / len(present),
        "n_test": n,
        "n_invalid": invalid,
        "per_class": per_class,
        "confusion_matrix": {"rows": labels, "columns": [*labels, INVALID], "counts": matrix},
    }


def read_predictions(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def confusion_matrix_png(metrics: dict[str, Any], title: str) -> bytes:
    """The confusion matrix as a PNG (matplotlib's Agg backend: no display needed)."""
    cm = metrics["confusion_matrix"]
    counts, rows, columns = cm["counts"], cm["rows"], cm["columns"]
    side = max(4.0, 0.45 * len(columns) + 2)
    with plots.figure(figsize=(side + 1, side)) as (fig, ax):
        image = ax.imshow(counts, cmap="Blues")
        fig.colorbar(image, ax=ax, fraction=0.046)
        ax.set_xticks(range(len(columns)), columns, rotation=60, ha="right")
        ax.set_yticks(range(len(rows)), rows)
        ax.set_xlabel("predicted (strictly parsed answer)")
        ax.set_ylabel("true label")
        ax.set_title(f"{title}\naccuracy {metrics['accuracy']:.3f}, invalid {metrics['invalid_rate']:.3f}")
        peak = max(max(r) for r in counts) or 1
        for r, row in enumerate(counts):
            for c, value in enumerate(row):
                if value:
                    color = "white" if value > peak / 2 else "black"
                    ax.text(c, r, str(value), ha="center", va="center", fontsize=7, color=color)
        return plots.png(fig)


def summary(metrics: dict[str, Any]) -> str:
    """The readable version for task logs and the CLI."""
    lines = [
        f"accuracy {metrics['accuracy']:.4f} on {metrics['n_test']} held-out images "
        f"(invalid answers {metrics['invalid_rate']:.2%}, macro F1 {metrics['macro_f1']:.4f})",
        f"{'label':<40} precision  recall     f1  support",
    ]
    for label, m in metrics["per_class"].items():
        lines.append(f"{label:<40} {m['precision']:>9.3f} {m['recall']:>7.3f} {m['f1']:>6.3f} {m['support']:>8}")
    report = metrics.get("calibration")
    lines.append(calibration.summary(report) if report else "calibration: none (no decision-token scores)")
    return "\n".join(lines)


def evaluate_version(plan: TrainingPlan, outcome: TrainingOutcome, conn_id: str | None = None) -> dict[str, Any]:
    """Score the run's test-split answers and write metrics.json, confusion_matrix.png, a copy of the answers and
    the likely mislabels (label_flags.jsonl) into `models/<version>/`. Returns the metrics without the bulky parts
    (small enough for XCom)."""
    source = storage.storage_path(plan.predictions_uri, conn_id)
    if not source.exists():  # a finished training never writes it later: retrying cannot help
        raise AirflowFailException(
            f"no {PREDICTIONS_FILE} at {plan.predictions_uri}: the training script writes it after training; "
            f"check the train task's log (job {plan.job_name})"
        )
    text = source.read_text(encoding="utf-8")
    metrics = compute_metrics(read_predictions(text), load_taxonomy(plan.taxonomy))
    train_summary = storage.read_json(storage.storage_path(plan.summary_uri, conn_id), default={})
    metrics |= {
        "train_seconds": train_summary.get("train_seconds", outcome.train_seconds),
        "global_step": train_summary.get("global_step"),
        "version": plan.version,
        "taxonomy": plan.taxonomy,
        "dataset_uri": plan.dataset_uri,
        "model_uri": plan.model_uri,
        "base_model": plan.base_model or "tiny LLaVA-NeXT built offline",
        "hyperparameters": plan.hyperparameters,
        "evaluated_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    root = storage.storage_path(plan.model_root, conn_id)
    copy = root / PREDICTIONS_FILE
    if copy != source:
        storage.write_bytes_atomic(copy, text.encode("utf-8"))
    storage.write_bytes_atomic(root / CONFUSION_MATRIX_FILE, confusion_matrix_png(metrics, plan.version))
    scores = read_scores(plan, conn_id)
    metrics["mislabel_flags"] = write_flags(plan, root, scores, conn_id)
    metrics["calibration"] = write_calibration(plan, root, scores, conn_id)
    storage.write_json(root / METRICS_FILE, metrics)
    log.info("%s", summary(metrics))
    return {key: value for key, value in metrics.items() if key not in ("per_class", "confusion_matrix")}


def read_scores(plan: TrainingPlan, conn_id: str | None) -> list[dict[str, Any]] | None:
    """The script's label scores (label_scores.jsonl), or None when the run scored no split."""
    scores = storage.storage_path(f"{plan.output_uri}/{SCORES_FILE}", conn_id)
    return read_predictions(scores.read_text(encoding="utf-8")) if scores.exists() else None


def write_flags(
    plan: TrainingPlan, root: ObjectStoragePath, scores: list[dict[str, Any]] | None, conn_id: str | None
) -> int | None:
    """Flag likely mislabels from the script's label scores into `root/label_flags.jsonl` (tasks.training.mislabels
    documents the rows); the count, or None when the run scored no split. Never changes a label."""
    if scores is None:
        return None
    flags = flag_mislabels(scores)
    report = storage.read_json(storage.storage_path(f"{plan.dataset_uri}/{REPORT_NAME}", conn_id), default={})
    path_of = {row["sha256"]: row["path"] for row in report.get("kept", [])}
    lines = "".join(
        json.dumps(
            flag | {"path": path_of.get(flag["sha256"]), "model_version": plan.version, "dataset_uri": plan.dataset_uri}
        )
        + "\n"
        for flag in flags
    )
    storage.write_bytes_atomic(root / FLAGS_FILE, lines.encode("utf-8"))
    return len(flags)


def write_calibration(
    plan: TrainingPlan, root: ObjectStoragePath, scores: list[dict[str, Any]] | None, conn_id: str | None
) -> dict[str, Any] | None:
    """Fit the confidence temperature on the validation split, check it on the test split and draw the
    risk-coverage curve into `root/risk_coverage.png` (tasks.training.calibration); None when the script wrote no
    decision-token scores (no split scored, or two labels share a first token: serving then reports no confidence)."""
    tokens = storage.read_json(storage.storage_path(f"{plan.output_uri}/{calibration.DECISION_TOKENS_FILE}", conn_id))
    if scores is None or not tokens:
        return None
    report = calibration.calibrate(scores, tokens)
    if report["after"] is not None:
        storage.write_bytes_atomic(
            root / calibration.RISK_COVERAGE_FILE, calibration.risk_coverage_png(report, plan.version)
        )
    return report
