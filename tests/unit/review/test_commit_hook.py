"""The commit queues the day for review (nightly and backlog both publish through tasks.nightly.commit.publish),
and a queue that cannot be written never fails a day that is already committed."""

from __future__ import annotations

import logging

import pyarrow as pa

from tasks.nightly import commit, predictions
from tasks.nightly.classification import PartitionJob, StagedPartition
from tasks.nightly.partitions import PartitionPlan
from tasks.nightly.predictions import RowStats
from tasks.review import queue
from tests.unit.review.conftest import row

DT = "2026-11-03"


def staged_day(root, n: int) -> tuple[PartitionJob, PartitionPlan, StagedPartition]:
    """A classified day of n rows, staged under its run token as the shards would leave it."""
    partition = predictions.partition_dir(root / "predictions", DT)
    job = PartitionJob(DT, "file:///in", str(partition), "t1", None, 1, "")
    names = [name for name, _ in predictions.ROW_COLUMNS]
    rows = [{name: None for name in names} | row(f"img-{i}.png", confidence=i / n) for i in range(n)]
    table = pa.Table.from_pylist(rows, schema=predictions.row_schema())
    predictions.write_table(job.run_dir / "part-0.parquet", table)
    plan = PartitionPlan(DT, "t1", listed=n, ignored=0, carried=0, to_classify=n, shards=[])
    stats = RowStats().add(table).to_dict()
    return job, plan, StagedPartition([{"path": "run=t1/part-0.parquet", "rows": n}], stats, 0.0, n)


def test_publish_queues_the_committed_day(root) -> None:
    extra = commit.publish(*staged_day(root, 100), verdict={"passed": True})
    assert extra["rows"] == 100
    items = queue.read_file(queue.day_file(root, DT))
    assert len(items) == queue.DEFAULT_GOLDEN_SAMPLE + queue.DEFAULT_LOW_CONFIDENCE_BUDGET
    assert {item.key for item in items if item.reason == "low_confidence"} <= {f"img-{i}.png" for i in range(70)}


def test_a_queue_that_cannot_be_written_is_logged_and_the_commit_stands(root, monkeypatch, caplog) -> None:
    def broken(*args, **kwargs):
        raise OSError("storage said no")

    monkeypatch.setattr(queue, "enqueue_day", broken)
    with caplog.at_level(logging.ERROR):
        extra = commit.publish(*staged_day(root, 5), verdict={"passed": True})
    assert extra["rows"] == 5 and predictions.read_success(predictions.partition_dir(root / "predictions", DT))
    assert "queueing it for review failed" in caplog.text and "storage said no" in caplog.text
