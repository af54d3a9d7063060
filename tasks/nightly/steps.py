"""The task bodies of the `classify_images` DAG: XCom dicts in, XCom dicts out, typed functions in between.

Kept apart from the DAG file so it stays wiring only, and apart from the domain modules (partitions,
classification, quality, costs) so those never see Airflow's params or XCom shapes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import ObjectStoragePath
from airflow.sdk.exceptions import AirflowFailException

from tasks.common import leases, storage
from tasks.common.settings import Settings
from tasks.costs import budget, ledger, pricing
from tasks.nightly import classification, partitions, predictions, quality
from tasks.nightly.classification import PartitionJob, ShardResult, StagedPartition
from tasks.nightly.partitions import PartitionPlan, Shard
from tasks.nightly.predictions import RowStats

log = logging.getLogger(__name__)


def incoming_path(settings: Settings, incoming_uri: str) -> ObjectStoragePath:
    """The `incoming_uri` param's partition, refused unless it lies inside the storage root or an input root."""
    return storage.contained(incoming_uri, settings, param="incoming_uri")


def look_for_partition(
    settings: Settings,
    params: dict[str, Any],
    logical_date: datetime | None,
    data_interval_start: datetime,
    now: datetime | None = None,
) -> tuple[bool, dict[str, Any]]:
    """(done waiting, {dt, present}): done once dt has an image, or `late_data_wait_minutes` after the day ended
    (an empty partition is a day with zero images, not a failure). Each look logs the dt, where and until when.

    A dt whose wait would end after the sensor's timeout (partitions.WAIT_TIMEOUT) — a manual run or `dags test` of
    a day that has not happened yet — fails at once, saying so: it could only time out, after a day of waiting."""
    dt = partitions.partition_dt(logical_date, data_interval_start)
    incoming = incoming_path(settings, params["incoming_uri"].format(dt=dt))
    present = any(partitions.image_keys(incoming))
    day_end = datetime.fromisoformat(dt).replace(tzinfo=UTC) + timedelta(days=1)
    deadline = day_end + timedelta(minutes=params["late_data_wait_minutes"])
    now = now or datetime.now(UTC)
    where = storage.plain_uri(incoming)
    if present:
        log.info("dt=%s: images found under %s", dt, where)
    elif now >= deadline:
        log.info(
            "dt=%s: no image under %s by %s (late_data_wait_minutes=%d after the day): a day with zero images",
            dt,
            where,
            deadline.isoformat(),
            params["late_data_wait_minutes"],
        )
    elif deadline - now > partitions.WAIT_TIMEOUT:
        raise AirflowFailException(
            f"dt={dt}: nothing under {where}, and the day ends at {day_end.isoformat()} — the wait for late data would "
            f"last until {deadline.isoformat()}, {(deadline - now).days} day(s) from now, beyond this sensor's "
            f"{partitions.WAIT_TIMEOUT} timeout. Nothing to wait for: run this dt once the day is over."
        )
    else:
        log.info(
            "dt=%s: no image yet under %s; waiting until %s (late_data_wait_minutes=%d after the day), next look in %s",
            dt,
            where,
            deadline.isoformat(),
            params["late_data_wait_minutes"],
            partitions.POKE_INTERVAL,
        )
    return present or now >= deadline, {"dt": dt, "present": present}


def plan(
    settings: Settings,
    dt: str,
    present: bool,
    params: dict[str, Any],
    run_id: str,
    dagrun_state: Callable[[str], str],
) -> dict[str, Any]:
    """The job every shard shares and the plan (with its shards), once this run holds dt's claim (one active
    DagRun per dt: partitions.claim_dt; `dagrun_state(run_id)` is the Task SDK's).

    An empty partition needs no endpoint, but prices the deployed one's idle day if there is one.
    """
    record = classification.deployed_endpoint(
        settings, name=params["endpoint_name"], backend=params["endpoint_backend"], required=present
    )
    partition = predictions.partition_dir(storage.root(settings) / storage.PREDICTIONS, dt)
    incoming = incoming_path(settings, params["incoming_uri"].format(dt=dt))
    partitions.claim_dt(partition, run_id, dagrun_state)
    incoming_uri = storage.plain_uri(incoming)
    partition_plan = partitions.plan_partition(
        incoming,
        partition,
        dt=dt,
        model_version=str(record["model_version"]) if record else "",
        shard_size=params["shard_size"],
        reclassify=params["reclassify"],
    )
    job = PartitionJob(
        dt=dt,
        incoming_uri=incoming_uri,
        partition_uri=str(partition),
        run_token=partition_plan.run_token,
        record=record,
        concurrency=params["concurrency"],
        conn_id=settings.aws_conn_id,
        client_options={"timeout_s": params["request_timeout_s"], "max_retries": params["max_retries"]},
        max_consecutive_failures=params["max_consecutive_failures"],
    )
    log.info(
        "dt=%s: %d files listed (%d ignored), %d rows carried over, %d images to classify in %d shard(s)",
        dt, partition_plan.listed, partition_plan.ignored, partition_plan.carried, partition_plan.to_classify,
        len(partition_plan.shards),
    )  # fmt: skip
    return {"job": job.to_dict(), "plan": partition_plan.to_dict()}


def check_budget(settings: Settings, planned: dict[str, Any], params: dict[str, Any]) -> list[dict[str, Any]]:
    """Raise when the estimate is above the budget; else return the shards to classify (what `expand` maps)."""
    job, plan_ = PartitionJob(**planned["job"]), PartitionPlan.from_dict(planned["plan"])
    if plan_.to_classify:
        estimate(settings, job.record, plan_.to_classify, params, f"dt={plan_.dt}")
    return planned["plan"]["shards"]


def estimate(settings: Settings, record: dict[str, Any], images: int, params: dict[str, Any], what: str) -> dict:
    """The budget guard: cost of `images` at the endpoint's measured throughput (else the assumed one)."""
    endpoint = pricing.EndpointPricing.of_record(record)
    measured = budget.measured_images_per_second(
        storage.root(settings) / storage.COSTS, endpoint.instance_type, endpoint.instance_count
    )
    speed = measured or params["assumed_images_per_second"]
    result = budget.check_budget(images, speed, endpoint, params["budget_usd"], what)
    log.info("%s: estimated $%.4f for %d images (%s throughput %.2f images/s), budget $%.2f", what, result["usd"],
             images, "measured" if measured else "assumed", speed, params["budget_usd"])  # fmt: skip
    return result | {"throughput": "measured" if measured else "assumed"}


def estimate_backfill(settings: Settings, days: list[str], params: dict[str, Any]) -> dict[str, Any]:
    """The budget guard for a whole range before `backfill create`: every image of every partition counted (an
    upper bound: a rerun skips what is already classified). Raises BudgetExceeded above `params["budget_usd"]`.
    With no endpoint deployed, prices the one deploy_endpoint deploys by default (`endpoint: "assumed"`)."""
    from tasks.serving.steps import serving_backend

    record = classification.deployed_endpoint(settings, name=params.get("endpoint_name"), required=False)
    endpoint = "deployed" if record else "assumed"
    record = record or serving_backend(settings).default_pricing()
    per_day = {day: count_images(settings, params["incoming_uri"].format(dt=day)) for day in days}
    what = f"backfill {days[0]}..{days[-1]}" if days else "backfill"
    result = estimate(settings, record, sum(per_day.values()), params, what)
    pricing_of = {key: record[key] for key in ("instance_type", "instance_count")}
    return {"per_day": per_day, "endpoint": endpoint, **pricing_of, **result}


def count_images(settings: Settings, incoming_uri: str) -> int:
    return sum(1 for _ in partitions.image_keys(incoming_path(settings, incoming_uri)))


def classify(job: dict[str, Any], shard: dict[str, Any]) -> dict[str, Any]:
    return classification.classify_shard(PartitionJob(**job), Shard(**shard)).__dict__


def collect(planned: dict[str, Any], results: list[dict[str, Any]]) -> dict[str, Any]:
    staged = classification.collect_shards(
        PartitionPlan.from_dict(planned["plan"]), [ShardResult(**r) for r in results or []]
    )
    return staged.to_dict()


def quality_gate(
    settings: Settings, planned: dict[str, Any], staged: dict[str, Any], thresholds: dict[str, Any]
) -> dict[str, Any]:
    verdict = quality.gate(
        RowStats.from_dict(staged["stats"]),
        storage.root(settings) / storage.PREDICTIONS,
        planned["plan"]["dt"],
        quality.QualityThresholds.from_params(thresholds),
    )
    log.log(logging.INFO if verdict["passed"] else logging.WARNING, "quality gate:\n%s", verdict["report"])
    return verdict


def publish(
    planned: dict[str, Any], staged: dict[str, Any], verdict: dict[str, Any], ti: Any | None = None
) -> dict[str, Any]:
    """Commit; returns the asset event's extra: the run's outcome at a glance (in the UI without opening logs).
    `ti` (the running task instance) owns the partition's lease, so a rerun after this task was killed takes the
    lease over at once instead of waiting for its expiry (lease_judge)."""
    job = PartitionJob(**planned["job"])
    owner, stale = lease_judge(ti)
    manifest = classification.publish(
        job, PartitionPlan.from_dict(planned["plan"]), StagedPartition(**staged), verdict, owner=owner, stale=stale
    )
    log.info("committed %s/%s: %d rows, %s", job.partition_uri, predictions.SUCCESS, manifest["rows"],
             manifest["stats"]["statuses"])  # fmt: skip
    return {
        "dt": manifest["dt"],
        "rows": manifest["rows"],
        "statuses": manifest["stats"]["statuses"],
        "quality": "passed" if verdict["passed"] else "violated (published: on_violation=warn)",
        "model_version": manifest["model_version"],
    }


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


def record_costs(
    settings: Settings, planned: dict[str, Any], staged: dict[str, Any], run_id: str, dag_id: str
) -> list[str]:
    job = PartitionJob(**planned["job"])
    if job.record is None:
        log.info("dt=%s: no images and no endpoint deployed: nothing to price", job.dt)
        return []
    classification = ledger.classification_entry(
        job.dt,
        pricing.EndpointPricing.of_record(job.record),
        endpoint=job.endpoint_name,
        model_version=job.model_version,
        stats=staged["stats"],
        busy_seconds=staged["busy_seconds"],
        run_id=run_id,
        dag_id=dag_id,
    )
    entries = ledger.partition_entries(classification, deployed_at=job.record["deployed_at"])
    costs_root = storage.root(settings) / storage.COSTS
    for entry in entries:
        log.info("%s %s: %.1f s, $%.6f", entry.kind, entry.key, entry.billable_seconds, entry.cost_usd)
    return [str(ledger.record(costs_root, entry)) for entry in entries]


def cost_report(settings: Settings, planned: dict[str, Any]) -> dict[str, str]:
    """`costs/reports/day=<dt>/costs.{csv,md,png}` for the 30 days up to dt."""
    from tasks.costs.daily_report import write_report

    return write_report(storage.root(settings) / storage.COSTS, planned["plan"]["dt"])
