"""Production accuracy from the reviewed golden sample: per ISO week, with a Wilson 95% interval.

Only golden-sample items count: they were drawn uniformly from each day's `ok` rows whatever their confidence, so the
share a reviewer confirmed estimates the accuracy of the labels production delivered. The doubtful rows and the
mislabel flags were chosen for being doubtful and would bias it low. Wilson's interval (scipy) stays inside [0, 1]
and honest for the few dozen reviews a week gives, where the normal approximation does not.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date

from tasks.review.decisions import Decision
from tasks.review.queue import QueueItem

CONFIDENCE_LEVEL = 0.95


@dataclass(frozen=True)
class WeeklyAccuracy:
    week: str  # ISO week, e.g. 2026-W45 (of the items' dt)
    reviewed: int  # golden items with a decision
    correct: int  # of those, the model's label confirmed
    low: float  # Wilson interval at CONFIDENCE_LEVEL
    high: float

    @property
    def accuracy(self) -> float:
        return self.correct / self.reviewed

    def line(self) -> str:
        return (
            f"{self.week}: {self.accuracy:.3f} ({self.correct}/{self.reviewed} reviewed golden images), "
            f"{CONFIDENCE_LEVEL:.0%} interval {self.low:.3f}..{self.high:.3f}"
        )


def wilson(correct: int, reviewed: int, level: float = CONFIDENCE_LEVEL) -> tuple[float, float]:
    from scipy.stats import binomtest

    interval = binomtest(correct, reviewed).proportion_ci(confidence_level=level, method="wilson")
    return float(interval.low), float(interval.high)


def iso_week(dt: str) -> str:
    year, week, _ = date.fromisoformat(dt).isocalendar()
    return f"{year}-W{week:02d}"


def production_accuracy(items: Iterable[QueueItem], reviewed: Mapping[str, Decision]) -> list[WeeklyAccuracy]:
    """Per ISO week with any reviewed golden item, oldest first."""
    tally: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # week -> [correct, reviewed]
    for item in items:
        decision = reviewed.get(item.content_sha256)
        if item.reason != "golden_sample" or item.dt is None or decision is None:
            continue
        counts = tally[iso_week(item.dt)]
        counts[0] += decision.label == item.label
        counts[1] += 1
    return [WeeklyAccuracy(week, n, correct, *wilson(correct, n)) for week, (correct, n) in sorted(tally.items())]
