"""Production accuracy on demo digits, whose true labels are known: a simulated model commits two weeks of days,
reviewers answer the truth on what the queue asks, and each week's interval holds the committed rows' accuracy."""

from __future__ import annotations

import hashlib
import math
from datetime import date, timedelta

import pytest

from tasks.model.demo_data import known_label
from tasks.nightly import predictions
from tasks.review import accuracy, decisions, queue
from tests.unit.review.conftest import commit_day, row

FIRST_DAY = date(2026, 11, 2)  # a Monday: 2026-W45 and 2026-W46


def model_answer(key: str) -> tuple[str, float]:
    """A simulated model, right on about 85% of the digits, less confident where it is wrong."""
    draw = hashlib.sha256(key.encode()).digest()
    truth = known_label(key)
    if draw[0] < 0.85 * 256:
        return truth, 0.6 + draw[1] / 256 * 0.4
    return str((int(truth) + 1) % 10), 0.3 + draw[1] / 256 * 0.5


def committed_week(root, days: int = 14, per_day: int = 120) -> list[str]:
    dts = [(FIRST_DAY + timedelta(n)).isoformat() for n in range(days)]
    for n, dt in enumerate(dts):
        keys = [f"digit-{i:04d}.png" for i in range(n * per_day, (n + 1) * per_day)]
        commit_day(root, dt, [row(key, *model_answer(key)) for key in keys])
    return dts


def true_accuracy(root, dts: list[str]) -> float:
    ok = [
        r
        for dt in dts
        for r in predictions.read_partition(predictions.partition_dir(root / "predictions", dt)).to_pylist()
        if r["status"] == "ok"
    ]
    return sum(r["label"] == known_label(r["key"]) for r in ok) / len(ok)


def test_the_weekly_estimate_from_the_golden_sample_holds_the_true_accuracy(root, digits) -> None:
    dts = committed_week(root)
    for item in queue.read_queue(root):  # reviewers answer the truth on everything queued
        decisions.record(root, item, known_label(item.key), reviewer="ana", taxonomy=digits)
    weeks = accuracy.production_accuracy(queue.read_queue(root), decisions.reviewed_labels(root))
    assert [w.week for w in weeks] == ["2026-W45", "2026-W46"]
    for week, days in zip(weeks, (dts[:7], dts[7:]), strict=True):
        truth = true_accuracy(root, days)
        assert week.reviewed == 7 * queue.DEFAULT_GOLDEN_SAMPLE
        assert week.low <= truth <= week.high, (week.line(), truth)
    doubtful = [i for i in queue.read_queue(root) if i.reason == "low_confidence"]
    biased = sum(i.label == known_label(i.key) for i in doubtful) / len(doubtful)
    assert biased < weeks[0].low  # why only the golden sample counts


def test_unreviewed_and_doubtful_items_do_not_count(root, digits) -> None:
    items = queue.enqueue_day(root, "2026-11-02", [row(f"digit-{i:04d}.png") for i in range(40)], budget=5, golden=3)
    golden = [i for i in items if i.reason == "golden_sample"]
    for item in [*golden[:2], *[i for i in items if i.reason == "low_confidence"]]:
        decisions.record(root, item, "3" if item is golden[0] else "4", reviewer="ana", taxonomy=digits)
    (week,) = accuracy.production_accuracy(items, decisions.reviewed_labels(root))
    assert (week.reviewed, week.correct, week.accuracy) == (2, 1, 0.5)


def test_the_golden_sample_and_the_interval_cover_the_truth_about_95_percent_of_the_time() -> None:
    population = [row(f"img-{i}.png", label="3" if i % 5 else "4") for i in range(1000)]  # 80% right ("3")
    covered = 0
    for day in range(300):
        dt = (FIRST_DAY + timedelta(day)).isoformat()
        sample = [r for _, r in queue.select(dt, population, budget=0, golden=40)]
        low, high = accuracy.wilson(sum(r["label"] == "3" for r in sample), len(sample))
        covered += low <= 0.8 <= high
    assert 0.90 <= covered / 300 <= 0.99


@pytest.mark.parametrize(("correct", "n"), [(17, 20), (0, 12), (140, 140), (61, 140)])
def test_wilson_is_the_textbook_formula(correct: int, n: int) -> None:
    z, p = 1.959963984540054, correct / n
    centre, half = (p + z * z / (2 * n)), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    expected = ((centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n))
    assert accuracy.wilson(correct, n) == pytest.approx(expected, abs=1e-9)
