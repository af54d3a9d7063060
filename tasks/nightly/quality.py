"""The quality gate between classifying a partition and publishing it (write, audit, publish).

It judges statistics only — the staged run's and the committed `_SUCCESS` manifests of trailing partitions — so it
costs nothing however large the partitions are. Rates are over the images the model was asked about (rejected
images are bad inputs, not model answers); the label check compares this partition's label distribution with the
pooled distribution of the trailing partitions (total variation distance: 0 = identical, 1 = disjoint).

The confidence checks need no labels: the mean calibrated confidence of the answers is the model's own estimate of
its accuracy on them (calibrated on held-out data, tasks.training.calibration), so a night of blurred, rotated or
off-domain photos shows as a low estimated accuracy, many low-confidence answers and a drop against the trailing
days — even when its label mix looks as usual. A day with nothing to judge gets the verdict `no data`, not `passed`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from datetime import date, timedelta
from typing import Any, Literal

from airflow.sdk import ObjectStoragePath
from airflow.sdk.exceptions import AirflowFailException

from tasks.nightly import predictions
from tasks.nightly.partitions import DT_FORMAT
from tasks.nightly.predictions import RowStats

Action = Literal["warn", "fail"]
Verdict = Literal["passed", "violated", "no data"]


@dataclass(frozen=True)
class QualityThresholds:
    max_invalid_rate: float = 0.05
    max_failed_rate: float = 0.02
    max_label_shift: float = 0.25
    min_estimated_accuracy: float = 0.75  # mean calibrated confidence of the answers
    low_confidence_below: float = 0.5  # an answer less confident than this (steps of 0.05) counts as low
    max_low_confidence_share: float = 0.2
    # Estimated accuracy below the trailing partitions' by more than this. On the demo (bench/confidence_gate.py) clean
    # days moved by -0.005 and +0.019; a blurred, rotated or off-domain night dropped 0.07-0.16.
    max_confidence_drop: float = 0.05
    trailing_partitions: int = 7  # days before dt whose committed partitions form the baseline
    min_images: int = 50  # fewer answered images (here or in the baseline): the label check is skipped as noise
    on_violation: Action = "fail"

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> QualityThresholds:
        return cls(**{k: v for k, v in params.items() if k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Check:
    name: str
    value: float | None  # None: not enough data to judge
    threshold: float
    bound: Literal["max", "min"] = "max"

    @property
    def passed(self) -> bool:
        if self.value is None:
            return True
        return self.value <= self.threshold if self.bound == "max" else self.value >= self.threshold

    def describe(self) -> str:
        if self.value is None:
            return f"{self.name}: skipped (not enough data)"
        verdict = "ok" if self.passed else "VIOLATED"
        return f"{self.name}: {self.value:.4f} ({self.bound} {self.threshold:.4f}) {verdict}"


def trailing_stats(predictions_root: ObjectStoragePath, dt: str, days: int) -> tuple[RowStats, list[str]]:
    """Pooled statistics of the committed partitions in the `days` before `dt`, and which dts they came from."""
    pooled = RowStats()
    found = []
    day = date.fromisoformat(dt)
    for back in range(1, days + 1):
        other = (day - timedelta(days=back)).strftime(DT_FORMAT)
        manifest = predictions.read_success(predictions.partition_dir(predictions_root, other))
        if manifest:
            pooled.merge(RowStats.from_dict(manifest["stats"]))
            found.append(other)
    return pooled, found


def label_shift(current: Counter[str], baseline: Counter[str]) -> float:
    """Total variation distance between two label distributions."""
    n, m = sum(current.values()), sum(baseline.values())
    return 0.5 * sum(abs(current[label] / n - baseline[label] / m) for label in set(current) | set(baseline))


def evaluate(stats: RowStats, baseline: RowStats, thresholds: QualityThresholds) -> list[Check]:
    asked = stats.rows - stats.statuses["rejected"]
    answered = stats.statuses["ok"]
    enough = answered >= thresholds.min_images and sum(baseline.labels.values()) >= thresholds.min_images
    estimated, before = stats.mean_confidence, baseline.mean_confidence
    confident = stats.confident_rows >= thresholds.min_images
    compared = confident and baseline.confident_rows >= thresholds.min_images and estimated is not None
    t = thresholds
    return [
        Check("invalid_rate", stats.statuses["invalid"] / asked if asked else None, t.max_invalid_rate),
        Check("failed_rate", stats.statuses["failed"] / asked if asked else None, t.max_failed_rate),
        Check("label_shift", label_shift(stats.labels, baseline.labels) if enough else None, t.max_label_shift),
        Check("estimated_accuracy", estimated if confident else None, t.min_estimated_accuracy, "min"),
        Check(
            "low_confidence_share",
            stats.share_below(t.low_confidence_below) if confident else None,
            t.max_low_confidence_share,
        ),
        Check(
            "confidence_drop", before - estimated if compared and before is not None else None, t.max_confidence_drop
        ),
    ]


def gate(
    stats: RowStats, predictions_root: ObjectStoragePath, dt: str, thresholds: QualityThresholds
) -> dict[str, Any]:
    """Run the checks; raise (no retry: the rows would not change) when one fails and the action is "fail".
    Returns the verdict, which is published in `_SUCCESS` when the action is "warn"."""
    baseline, baseline_dts = trailing_stats(predictions_root, dt, thresholds.trailing_partitions)
    checks = evaluate(stats, baseline, thresholds)
    violations = [c for c in checks if not c.passed]
    report = "\n".join(c.describe() for c in checks)
    if violations and thresholds.on_violation == "fail":
        raise AirflowFailException(f"quality gate failed for dt={dt}; the partition is NOT published:\n{report}")
    asked = stats.rows - stats.statuses["rejected"]
    verdict: Verdict = "violated" if violations else "passed" if asked else "no data"
    return {
        "verdict": verdict,
        "passed": not violations,
        "estimated_accuracy": stats.mean_confidence,
        "checks": [asdict(c) | {"passed": c.passed} for c in checks],
        "baseline_dts": baseline_dts,
        "thresholds": asdict(thresholds),
        "report": report,
    }
