"""The task bodies of the `classify_images` DAG: XCom dicts in, XCom dicts out, typed functions in between.

Kept apart from the DAG file so it stays wiring only, and apart from the domain modules (partitions,
classification, quality, costs) so those never see Airflow's params or XCom shapes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from tasks.common import run_notes, storage
from tasks.common.settings import Settings
from tasks.costs import budget, ledger, pricing
from tasks.nightly import classification, commit, partitions, predictions, quality
from tasks.nightly.classification import PartitionJob, ShardResult, StagedPartition
from tasks.nightly.commit import count_images, incoming_path
from tasks.nightly.partitions import PartitionPlan, Shard

log = logging.getLogger(__name__)


def look_for_partition(
    settings: Settings,
    params: dict[str, Any],
    logical_date: datetime | None,
    data_interval_start: datetime,
    now: datetime | None = None,
    run_after: datetime | None = None,
) -> tuple[bool, dict[str, Any]]:
    """(done waiting, {dt, present}): done once dt has an image, or `late_data_wait_minutes` after the day ended
    (an empty partition is a day with zero images, not a failure). Each look logs the dt, where and until when.

    A dt whose wait would end after the sensor's timeout (partitions.WAIT_TIMEOUT) — a manual run or `dags test` of
    a day that has not happened yet — fails at once, saying so: it could only time out, after a day of waiting.
    A run made during its logical date's day (the trigger form's default: now) processes the day before
    (partitions.partition_dt), and each look says so."""
    dt = partitions.partition_dt(logical_date, data_interval_start, run_after)
    if logical_date is not None and dt != partitions.partition_dt(logical_date, data_interval_start):
        log.info(
            "dt=%s: the logical date %s falls on a day that was not over when this run was made (%s): "
            "processing the last complete day, %s",
            dt,
            logical_date.isoformat(),
            run_after.isoformat() if run_after else "",
            dt,
        )
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
        model_version=record.model_version if record else "",
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
        dt,
        partition_plan.listed,
        partition_plan.ignored,
        partition_plan.carried,
        partition_plan.to_classify,
        len(partition_plan.shards),
    )
    return {"job": job.to_dict(), "plan": partition_plan.to_dict()}


def check_budget(settings: Settings, planned: dict[str, Any], params: dict[str, Any]) -> list[dict[str, Any]]:
    """Raise when the estimate is above the budget; else return the shards to classify (what `expand` maps)."""
    job, plan_ = PartitionJob.from_dict(planned["job"]), PartitionPlan.from_dict(planned["plan"])
    if plan_.to_classify:
        estimate_partition(
            settings, pricing.EndpointPricing.of_record(job.record), plan_.to_classify, params, f"dt={plan_.dt}"
        )
    return planned["plan"]["shards"]


def estimate_partition(
    settings: Settings, endpoint: pricing.EndpointPricing, images: int, params: dict[str, Any], what: str
) -> dict:
    """The budget guard: cost of `images` at the endpoint's measured throughput (else the assumed one)."""
    measured = budget.measured_images_per_second(
        storage.root(settings) / storage.COSTS, endpoint.instance_type, endpoint.instance_count
    )
    speed = measured or params["assumed_images_per_second"]
    result = budget.check_budget(images, speed, endpoint, params["budget_usd"], what)
    log.info(
        "%s: estimated $%.4f for %d images (%s throughput %.2f images/s), budget $%.2f",
        what,
        result["usd"],
        images,
        "measured" if measured else "assumed",
        speed,
        params["budget_usd"],
    )
    return result | {"throughput": "measured" if measured else "assumed"}


def estimate_backfill(settings: Settings, days: list[str], params: dict[str, Any]) -> dict[str, Any]:
    """The budget guard for a whole range before `backfill create`: every image of every partition counted (an
    upper bound: a rerun skips what is already classified). Raises BudgetExceeded above `params["budget_usd"]`.
    With no endpoint deployed, prices the one deploy_endpoint deploys by default (`endpoint: "assumed"`)."""
    from tasks.serving.steps import serving_backend

    record = classification.deployed_endpoint(settings, name=params.get("endpoint_name"), required=False)
    endpoint = "deployed" if record else "assumed"
    priced = pricing.EndpointPricing.of_record(record) if record else serving_backend(settings).default_pricing()
    per_day = {day: count_images(settings, params["incoming_uri"].format(dt=day)) for day in days}
    what = f"backfill {days[0]}..{days[-1]}" if days else "backfill"
    result = estimate_partition(settings, priced, sum(per_day.values()), params, what)
    pricing_of = {"instance_type": priced.instance_type, "instance_count": priced.instance_count}
    return {"per_day": per_day, "endpoint": endpoint, **pricing_of, **result}


def classify(job: dict[str, Any], shard: dict[str, Any]) -> dict[str, Any]:
    return classification.classify_shard(PartitionJob.from_dict(job), Shard(**shard)).__dict__


def collect(planned: dict[str, Any], results: list[dict[str, Any]]) -> dict[str, Any]:
    staged = classification.collect_shards(
        PartitionPlan.from_dict(planned["plan"]), [ShardResult(**r) for r in results or []]
    )
    return staged.to_dict()


def quality_gate(
    settings: Settings,
    planned: dict[str, Any],
    staged: dict[str, Any],
    thresholds: dict[str, Any],
    ti: Any | None = None,
) -> dict[str, Any]:
    """The gate's verdict; when it refuses the day (on_violation=fail), the run's note says so before the task
    fails — nothing is published, so publish_partition never writes one."""
    plan_ = PartitionPlan.from_dict(planned["plan"])
    try:
        return commit.gate(
            settings, plan_, StagedPartition(**staged), quality.QualityThresholds.from_params(thresholds)
        )
    except AirflowFailException:
        if ti is not None:
            summary = {"dt": plan_.dt, "rows": staged["stats"]["rows"], "statuses": staged["stats"]["statuses"]}
            summary["model_version"] = PartitionJob.from_dict(planned["job"]).model_version
            outcome = day_outcome(plan_, summary, {"verdict": "violated: NOT published"}, {})
            run_notes.write_note(ti.dag_id, ti.run_id, outcome.note())
        raise


def publish(
    planned: dict[str, Any],
    staged: dict[str, Any],
    verdict: dict[str, Any],
    ti: Any | None = None,
    costs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Commit (tasks.nightly.commit.publish), then write the run's note (run_notes: dt, images, statuses, verdict,
    cost, model) when run by a task instance; returns the same fields flat: the asset event's extra."""
    plan_ = PartitionPlan.from_dict(planned["plan"])
    summary = commit.publish(PartitionJob.from_dict(planned["job"]), plan_, StagedPartition(**staged), verdict, ti)
    outcome = day_outcome(plan_, summary, verdict, costs or {})
    if ti is not None:
        run_notes.write_note(ti.dag_id, ti.run_id, outcome.note())
    return outcome.extra()


def day_outcome(
    plan_: PartitionPlan, summary: dict[str, Any], verdict: dict[str, Any], costs: dict[str, Any]
) -> run_notes.DayOutcome:
    """What the run note and the asset event say about a committed day (both DAGs: backlog/steps.py too)."""
    return run_notes.DayOutcome(
        dt=summary["dt"],
        images=plan_.images,
        classified=plan_.to_classify,
        carried=plan_.carried,
        statuses=summary["statuses"],
        quality=run_notes.quality_verdict(verdict, summary["rows"]),
        model_version=summary["model_version"],
        estimated_accuracy=verdict.get("estimated_accuracy"),
        cost_usd=costs.get("cost_usd"),
        usd_per_1000_images=costs.get("usd_per_1000_images"),
    )


def record_costs(
    settings: Settings, planned: dict[str, Any], staged: dict[str, Any], run_id: str, dag_id: str
) -> dict[str, Any]:
    """The day's ledger rows (classification + the endpoint's idle time); returns their paths and the
    classification's cost, which the run note and the asset event carry."""
    job = PartitionJob.from_dict(planned["job"])
    if job.record is None:
        log.info("dt=%s: no images and no endpoint deployed: nothing to price", job.dt)
        return {"ledger_rows": [], "cost_usd": None, "usd_per_1000_images": None}
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
    entries = ledger.partition_entries(classification, deployed_at=job.record.deployed_at)
    costs_root = storage.root(settings) / storage.COSTS
    for entry in entries:
        log.info("%s %s: %.1f s, $%.6f", entry.kind, entry.key, entry.billable_seconds, entry.cost_usd)
    return {
        "ledger_rows": [str(ledger.record(costs_root, entry)) for entry in entries],
        "cost_usd": classification.cost_usd,
        "usd_per_1000_images": classification.usd_per_1000_images,
    }


def cost_report(settings: Settings, planned: dict[str, Any]) -> dict[str, str]:
    """`costs/reports/day=<dt>/costs.{csv,md,png}` for the 30 days up to dt."""
    return commit.write_cost_report(settings, planned["plan"]["dt"])
