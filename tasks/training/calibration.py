"""Fit and check a model version's confidence calibration from the training script's decision-token scores.

The temperature is fitted on the validation split and judged on the test split (never fitted on what it is judged
on): NLL, ECE and Brier before and after, the AUROC of confidence for telling right answers from wrong ones, the
accuracy of the most confident 80 % against all, and the risk-coverage curve, drawn beside the confusion matrix.
A test row counts as right when its top decision token is its label's: what serving answers under the constraint.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from tasks.common import plots
from tasks.model.calibration import (
    Calibration,
    accuracy_at_coverage,
    as_arrays,
    fit_temperature,
    reliability,
    risk_coverage,
    softmax,
)

DECISION_TOKENS_FILE = "decision_tokens.json"  # written by include/training/train.py
RISK_COVERAGE_FILE = "risk_coverage.png"
REPORTED_COVERAGE = 0.8  # "the 80 % most confident": a review budget of one image in five


def calibrate(scores: Iterable[dict[str, Any]], decision_tokens: dict[str, int]) -> dict[str, Any]:
    """The calibration report (metrics.json's `calibration`); `temperature` is 1.0 when there is no validation
    split to fit on, and the test metrics are None when there is no test split."""
    by_split: dict[str, list[dict[str, Any]]] = {}
    for row in scores:
        if "decision_logprobs" in row:
            by_split.setdefault(row["split"], []).append(row)
    labels = list(decision_tokens)
    validation, test = (
        [row for row in by_split.get(split, []) if row["label"] in decision_tokens] for split in ("validation", "test")
    )
    temperature = fit_temperature(*_arrays(validation, labels)) if validation else 1.0
    report: dict[str, Any] = {
        "temperature": round(temperature, 4),
        "fitted_on": {"split": "validation", "rows": len(validation)},
        "decision_tokens": decision_tokens,
        "test_rows": len(test),
        "before": None,
        "after": None,
    }
    if test:
        logprobs, truth = _arrays(test, labels)
        before, after = softmax(logprobs), softmax(logprobs, temperature)
        confidence, correct = after.max(axis=1), after.argmax(axis=1) == truth
        report |= {
            "before": reliability(before, truth),
            "after": reliability(after, truth),
            f"accuracy_top_{round(REPORTED_COVERAGE * 100)}pct": accuracy_at_coverage(
                confidence, correct, REPORTED_COVERAGE
            ),
            "risk_coverage": risk_coverage(confidence, correct),
        }
    return report


def calibration_of(report: dict[str, Any]) -> Calibration:
    """What serving needs from the report."""
    return Calibration(decision_tokens=dict(report["decision_tokens"]), temperature=float(report["temperature"]))


def risk_coverage_png(report: dict[str, Any], title: str) -> bytes:
    """Accuracy against the share of predictions kept (most confident first), with the all-images accuracy."""
    curve = report["risk_coverage"]
    with plots.figure(figsize=(5.5, 4)) as (fig, ax):
        ax.plot([p["coverage"] * 100 for p in curve], [p["accuracy"] for p in curve], marker="o", markersize=3)
        ax.axhline(report["after"]["accuracy"], color="grey", linestyle="--", label="all predictions")
        ax.set_xlabel("predictions kept, most confident first (%)")
        ax.set_ylabel("accuracy of the kept predictions")
        ax.set_xlim(0, 100)
        ax.set_title(
            f"{title}\nrisk-coverage on {report['test_rows']} held-out images, "
            f"T={report['temperature']}, ECE {report['before']['ece']:.3f} → {report['after']['ece']:.3f}",
            fontsize=9,
        )
        ax.legend(loc="lower left")
        ax.grid(alpha=0.3)
        return plots.png(fig)


def summary(report: dict[str, Any]) -> str:
    """One line for the task log."""
    if report["after"] is None:
        return f"calibration: T={report['temperature']} (no test rows to check it on)"
    before, after = report["before"], report["after"]
    auroc = "n/a" if after["auroc"] is None else f"{after['auroc']:.3f}"
    top = report[f"accuracy_top_{round(REPORTED_COVERAGE * 100)}pct"]
    return (
        f"calibration: T={report['temperature']} fitted on {report['fitted_on']['rows']} validation rows; on "
        f"{report['test_rows']} test rows ECE {before['ece']:.4f} → {after['ece']:.4f}, NLL {before['nll']:.4f} → "
        f"{after['nll']:.4f}, Brier {before['brier']:.4f} → {after['brier']:.4f}; AUROC {auroc}; accuracy of the "
        f"{REPORTED_COVERAGE:.0%} most confident {top:.4f} vs {after['accuracy']:.4f} for all"
    )


def _arrays(rows: list[dict[str, Any]], labels: list[str]) -> tuple[np.ndarray, np.ndarray]:
    return as_arrays([row["decision_logprobs"] for row in rows], labels, [row["label"] for row in rows])
