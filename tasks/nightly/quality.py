"""The quality gate between classifying a partition and publishing it (write, audit, publish).

It judges statistics only — the staged run's and the committed `_SUCCESS` manifests of trailing partitions — so it
costs nothing however large the partitions are. Rates are over the images the model was asked about (rejected
images are bad inputs, not model answers); the label check compares this partition's label distribution with the
pooled distribution of the trailing partitions (total variation distance: 0 = identical, 1 = disjoint).
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


@dataclass(frozen=True)
class QualityThresholds:
    max_invalid_rate: float = 0.05
    max_failed_rate: float = 0.02
    max_label_shift: float = 0.25
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

    @property
    def passed(self) -> bool:
        return self.value is None or self.value <= self.threshold

    def describe(self) -> str:
        if self.value is None:
            return f"{self.name}: skipped (not enough data)"
        verdict = "ok" if self.passed else "VIOLATED"
        return f"{self.name}: {self.value:.4f} (threshold {self.threshold:.4f}) {verdict}"


def trailing_labels(predictions_root: ObjectStoragePath, dt: str, days: int) -> tuple[Counter[str], list[str]]:
    """Pooled label counts of the committed partitions in the `days` before `dt`, and which dts they came from."""
    pooled: Counter[str] = Counter()
    found = []
    day = date.fromisoformat(dt)
    for back in range(1, days + 1):
        other = (day - timedelta(days=back)).strftime(DT_FORMAT)
        manifest = predictions.read_success(predictions.partition_dir(predictions_root, other))
        if manifest:
            pooled.update(manifest["stats"]["labels"])
            found.append(other)
    return pooled, found


def label_shift(current: Counter[str], baseline: Counter[str]) -> float:
    """Total variation distance between two label distributions."""
    n, m = sum(current.values()), sum(baseline.values())
    return 0.5 * sum(abs(current[label] / n - baseline[label] / m) for label in set(current) | set(baseline))


def evaluate(stats: RowStats, baseline: Counter[str], thresholds: QualityThresholds) -> list[Check]:
    asked = stats.rows - stats.statuses["rejected"]
    answered = stats.statuses["ok"]
    enough = answered >= thresholds.min_images and sum(baseline.values()) >= thresholds.min_images
    return [
        Check("invalid_rate", stats.statuses["invalid"] / asked if asked else None, thresholds.max_invalid_rate),
        Check("failed_rate", stats.statuses["failed"] / asked if asked else None, thresholds.max_failed_rate),
        Check("label_shift", label_shift(stats.labels, baseline) if enough else None, thresholds.max_label_shift),
    ]


def gate(
    stats: RowStats, predictions_root: ObjectStoragePath, dt: str, thresholds: QualityThresholds
) -> dict[str, Any]:
    """Run the checks; raise (no retry: the rows would not change) when one fails and the action is "fail".
    Returns the verdict, which is published in `_SUCCESS` when the action is "warn"."""
    baseline, baseline_dts = trailing_labels(predictions_root, dt, thresholds.trailing_partitions)
    checks = evaluate(stats, baseline, thresholds)
    violations = [c for c in checks if not c.passed]
    report = "\n".join(c.describe() for c in checks)
    if violations and thresholds.on_violation == "fail":
        raise AirflowFailException(f"quality gate failed for dt={dt}; the partition is NOT published:\n{report}")
    return {
        "passed": not violations,
        "checks": [asdict(c) | {"passed": c.passed} for c in checks],
        "baseline_dts": baseline_dts,
        "thresholds": asdict(thresholds),
        "report": report,
    }
