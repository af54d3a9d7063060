"""The commit queues the day for review (nightly and backlog both publish through tasks.nightly.commit.publish),
and a queue that cannot be written never fails a day that is already committed."""

from __future__ import annotations

import logging

from tasks.nightly import predictions
from tasks.review import queue
from tests.unit.review.conftest import commit_day, row

DT = "2026-11-03"


def rows(n: int) -> list[dict]:
    return [row(f"img-{i}.png", confidence=i / n) for i in range(n)]


def test_publish_queues_the_committed_day(root) -> None:
    assert commit_day(root, DT, rows(100))["rows"] == 100
    items = queue.read_file(queue.day_file(root, DT))
    assert len(items) == queue.DEFAULT_GOLDEN_SAMPLE + queue.DEFAULT_LOW_CONFIDENCE_BUDGET
    assert {item.key for item in items if item.reason == "low_confidence"} <= {f"img-{i}.png" for i in range(70)}


def test_a_queue_that_cannot_be_written_is_logged_and_the_commit_stands(root, monkeypatch, caplog) -> None:
    def broken(*args, **kwargs):
        raise OSError("storage said no")

    monkeypatch.setattr(queue, "enqueue_day", broken)
    with caplog.at_level(logging.ERROR):
        extra = commit_day(root, DT, rows(5))
    assert extra["rows"] == 5 and predictions.read_success(predictions.partition_dir(root / "predictions", DT))
    assert "queueing it for review failed" in caplog.text and "storage said no" in caplog.text
