"""How a classified day ends, whichever DAG classified it (classify_images over the endpoint, classify_backlog through
Batch Transform): the quality gate, the commit under the partition's lease, the day's review queue, the count of a
day's images and the cost report. Typed functions: each DAG's steps module turns its own XComs into these
arguments, so reshaping one DAG's XComs never touches the other.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from airflow.sdk import ObjectStoragePath

from tasks.common import leases, storage
from tasks.common.settings import Settings
from tasks.nightly import classification, partitions, predictions, quality
from tasks.nightly.classification import PartitionJob, StagedPartition
from tasks.nightly.partitions import PartitionPlan
from tasks.nightly.predictions import RowStats
from tasks.review import queue as review_queue

log = logging.getLogger(__name__)
QUALITY_TEXT = {"violated": "violated (published: on_violation=warn)"}  # "passed" and "no data" read as they are


def gate(
    settings: Settings, plan: PartitionPlan, staged: StagedPartition, thresholds: quality.QualityThresholds
) -> dict[str, Any]:
    """The day's quality verdict against the trailing committed partitions (raises when the action is "fail")."""
    stats = RowStats.from_dict(staged.stats)
    verdict = quality.gate(stats, storage.root(settings) / storage.PREDICTIONS, plan.dt, thresholds)
    log.log(logging.INFO if verdict["passed"] else logging.WARNING, "quality gate:\n%s", verdict["report"])
    return verdict


def publish(
    job: PartitionJob, plan: PartitionPlan, staged: StagedPartition, verdict: dict[str, Any], ti: Any | None = None
) -> dict[str, Any]:
    """Commit; returns the asset event's extra: the run's outcome at a glance (in the UI without opening logs).
    `ti` (the running task instance) owns the partition's lease, so a rerun after this task was killed takes the
    lease over at once instead of waiting for its expiry (lease_judge)."""
    owner, stale = lease_judge(ti)
    manifest = classification.publish(job, plan, staged, verdict, owner=owner, stale=stale)
    log.info(
        "committed %s/%s: %d rows, %s",
        job.partition_uri,
        predictions.SUCCESS,
        manifest["rows"],
        manifest["stats"]["statuses"],
    )
    queue_for_review(job)
    return {
        "dt": manifest["dt"],
        "rows": manifest["rows"],
        "statuses": manifest["stats"]["statuses"],
        "quality": QUALITY_TEXT.get(verdict.get("verdict", "passed"), verdict.get("verdict")),
        "estimated_accuracy": verdict.get("estimated_accuracy"),
        "model_version": manifest["model_version"],
    }


def queue_for_review(job: PartitionJob) -> None:
    """Queue the committed day's golden sample and doubtful rows (tasks.review.queue), one committed file at a time.
    A failure is logged, never raised: the day is committed and its readers are served whatever happens here, and
    the next publish of the day (a rerun, which carries its rows over) queues what this one missed."""
    partition = storage.storage_path(job.partition_uri, job.conn_id)  # <root>/predictions/dt=D
    try:
        rows = (
            row
            for path, _ in predictions.committed_files(partition)
            for row in predictions.read_table(path).select(list(review_queue.ROW_FIELDS)).to_pylist()
        )
        added = review_queue.enqueue_day(partition.parent.parent, job.dt, rows)
    except Exception:
        log.exception("dt=%s is committed, but queueing it for review failed: rerun the day to queue it", job.dt)
        return
    log.info("review queue: %d item(s) added for dt=%s", len(added), job.dt)


def gate_and_publish(
    settings: Settings,
    job: PartitionJob,
    plan: PartitionPlan,
    staged: StagedPartition,
    thresholds: quality.QualityThresholds,
    ti: Any | None = None,
) -> dict[str, Any]:
    """The quality gate, then the commit (classify_backlog's day: both in one task)."""
    return publish(job, plan, staged, gate(settings, plan, staged, thresholds), ti)


def lease_judge(ti: Any | None) -> tuple[dict[str, Any], leases.Judge]:
    """(owner, stale): the task instance a lease records, and when another holder's lease may be taken over — once
    expired, or at once when its task instance is provably gone (Airflow, asked through the Task SDK, has no
    queued or running instance of it)."""
    if ti is None:
        return {}, leases.expired

    def live(owner: Mapping[str, Any]) -> int:
        return ti.get_ti_count(
            dag_id=owner["dag_id"],
            run_ids=[owner["run_id"]],
            task_ids=[owner["task_id"]],
            map_index=owner.get("map_index"),
            states=list(leases.LIVE_TI_STATES),
        )

    me = leases.owner_of(ti)
    return me, leases.any_of(leases.expired, leases.owner_gone(me, live))


def incoming_path(settings: Settings, incoming_uri: str) -> ObjectStoragePath:
    """An `incoming_uri` param's partition, refused unless it lies inside the storage root or an input root."""
    return storage.contained(incoming_uri, settings, param="incoming_uri")


def count_images(settings: Settings, incoming_uri: str) -> int:
    """The images of one day's incoming partition (containment-checked)."""
    return sum(1 for _ in partitions.image_keys(incoming_path(settings, incoming_uri)))


def write_cost_report(settings: Settings, dt: str) -> dict[str, str]:
    """`costs/reports/day=<dt>/costs.{csv,md,png}` for the 30 days up to dt."""
    from tasks.costs.daily_report import write_report

    return write_report(storage.root(settings) / storage.COSTS, dt)
