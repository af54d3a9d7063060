"""The Airflow-facing steps of `classify_backlog`: the backend seam and the task bodies the DAG wires.

plan_backlog (pre-flight: refuses above the budget or past the deadline before anything is spent) → write_requests
×days → transform_requests → transform ×jobs (Batch Transform, or the local runner against the local endpoint) →
commit_day ×days (join, accounting, cost, quality gate, publish) → cost_report. Each day ends in the nightly
format, committed through the nightly modules, so nothing downstream can tell which path produced it.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, replace
from datetime import datetime
from typing import Any, Protocol

from airflow.sdk import XComArg
from airflow.sdk.exceptions import AirflowFailException

from tasks.backlog import join, plan, requests
from tasks.backlog.plan import Estimate, Throughput, TransformJob, TransformResources
from tasks.common import run_notes, storage
from tasks.common.settings import Settings
from tasks.costs import budget, ledger
from tasks.costs.pricing import EndpointPricing
from tasks.nightly import classification, commit, partitions, predictions, steps
from tasks.nightly.classification import PartitionJob
from tasks.nightly.partitions import PartitionPlan, Shard
from tasks.nightly.quality import QualityThresholds
from tasks.records.endpoint import EndpointRecord

log = logging.getLogger(__name__)
DAG_ID = "classify_backlog"
TRANSFORM_POOL = "batch_transform"  # one job at a time (config/airflow/pools.json): what the estimate assumes


class BacklogBackend(Protocol):
    """What stands behind the transform step. `transform` adds the mapped `transform` task (one per job, given its
    CreateTransformJob request) and returns its output; `outcome` is what the job's describe says (None: never
    created)."""

    default_instance_type: str
    assumed_images_per_second: float  # per instance, until the ledger has measured one
    assumed_basis: str  # where that figure comes from, for the estimate's label
    startup_s: float  # model start-up each job pays on each instance
    price_region: str

    def model_name(self, record: EndpointRecord) -> str: ...
    def uri(self, storage_uri: str) -> str: ...
    def transform(self, requests: XComArg, pool: str) -> XComArg: ...
    def outcome(self, job: TransformJob) -> dict[str, Any] | None: ...


def backlog_backend(settings: Settings) -> BacklogBackend:
    def local() -> BacklogBackend:
        from tasks.backlog.local import LocalBacklog

        return LocalBacklog(settings)

    def sagemaker() -> BacklogBackend:
        from tasks.backlog.sagemaker import SageMakerBacklog

        return SageMakerBacklog(settings)

    return settings.by_backend(local=local, sagemaker=sagemaker)


def resources(backend: BacklogBackend, params: dict[str, Any]) -> TransformResources:
    from tasks.serving.config import ServingConfig

    return TransformResources(
        instance_type=params["instance_type"] or backend.default_instance_type,
        instance_count=int(params["instance_count"]),
        # LMI batches up to max_rolling_batch_size requests: keep that many in flight per instance
        concurrency=int(params["concurrency_per_instance"] or ServingConfig(model_uri="").max_rolling_batch_size),
        invocation_timeout_s=int(params["invocation_timeout_s"]),
        invocation_retries=int(params["invocation_retries"]),
    )


def throughput(settings: Settings, backend: BacklogBackend, instance_type: str, count: int, assumed: float | None):
    """Per-instance images/s: what the ledger measured for this instance type (at this count, else on one instance),
    else the assumed figure, labelled as such."""
    costs = storage.root(settings) / storage.COSTS
    for measured_count in dict.fromkeys((count, 1)):
        measured = budget.measured_images_per_second(costs, instance_type, measured_count)
        if measured:
            per_instance = measured / measured_count
            return Throughput(per_instance, f"measured by the ledger on {measured_count} x {instance_type}")
    speed = assumed or backend.assumed_images_per_second
    basis = "the assumed_images_per_second param" if assumed else backend.assumed_basis
    return Throughput(speed, f"ASSUMED from {basis}; nothing measured on {instance_type} yet")


def estimate_backlog(
    settings: Settings, backend: BacklogBackend, res: TransformResources, images: int, jobs: int, params: dict[str, Any]
) -> Estimate:
    pricing = EndpointPricing(settings.backend, backend.price_region, res.instance_type, res.instance_count)
    assumed = params.get("assumed_images_per_second")
    speed = throughput(settings, backend, res.instance_type, res.instance_count, assumed)
    return plan.estimate_transform(
        images, jobs, pricing, speed, startup_s=backend.startup_s, deadline_hours=params.get("deadline_hours")
    )


def refuse_if_over(result: Estimate, budget_usd: float, what: str) -> None:
    """Refuse (no retry: the numbers would not change) above the budget or past the deadline."""
    text = "\n".join(result.lines())
    if result.usd > budget_usd:
        raise budget.BudgetExceeded(
            f"{what}: estimated ${result.usd:,.2f} is above the budget of ${budget_usd:,.2f}; "
            f"nothing was spent.\n{text}"
        )
    if result.deadline_hours is not None and result.images and result.wall_hours > result.deadline_hours:
        raise AirflowFailException(
            f"{what}: {result.wall_hours:,.1f} h with {result.instance_count} instance(s) misses the deadline of "
            f"{result.deadline_hours:g} h; nothing was spent.\n{text}"
        )


def images_per_day(settings: Settings, incoming_uri: str, days: list[str]) -> dict[str, int]:
    return {day: commit.count_images(settings, incoming_uri.format(dt=day)) for day in days}


def estimate_range(
    settings: Settings, params: dict[str, Any], images: int | None = None
) -> tuple[dict[str, int], Estimate]:
    """The CLI's pre-flight (`estimate-backlog`): every image of every day counted (an upper bound: a run carries
    over what this model version already classified), or `images` as a what-if without counting."""
    backend = backlog_backend(settings)
    res = resources(backend, params)
    days = plan.days_between(params["from_date"], params["to_date"])
    per_day = images_per_day(settings, params["incoming_uri"], days) if images is None else {}
    images = sum(per_day.values()) if images is None else images
    return per_day, estimate_backlog(
        settings, backend, res, images, plan.jobs_needed(images, params["images_per_job"]), params
    )


def plan_backlog(
    settings: Settings, params: dict[str, Any], run_id: str, logical_date: datetime | None, run_after: datetime
) -> dict[str, Any]:
    """Plan every day as the nightly run would, group the request files into jobs, estimate, refuse or go. Every
    day's `incoming_uri` is checked (storage.contained) before anything is listed, read or asked."""
    from tasks.common.runs import run_identity

    days = plan.days_between(params["from_date"], params["to_date"])
    incoming = {dt: commit.incoming_path(settings, params["incoming_uri"].format(dt=dt)) for dt in days}  # first
    backend = backlog_backend(settings)
    record = classification.deployed_endpoint(settings)
    version = params["model_version"] or record.model_version
    if version != record.model_version:
        raise AirflowFailException(
            f"model version {version!r} is not the deployed one ({record.model_version!r}): "
            "deploy it with deploy_endpoint first, or leave model_version empty"
        )
    model_name = backend.model_name(record)
    res = resources(backend, params)
    root = storage.root(settings)
    planned_days, files = [], []
    for dt in days:
        incoming_uri = storage.plain_uri(incoming[dt])  # as contained: normalised, what write_requests reads
        partition = predictions.partition_dir(root / storage.PREDICTIONS, dt)
        day_plan = partitions.plan_partition(
            incoming[dt],
            partition,
            dt=dt,
            model_version=version,
            shard_size=params["images_per_file"],
            reclassify=params["reclassify"],
        )
        job = PartitionJob(
            dt, incoming_uri, str(partition), day_plan.run_token, record, res.concurrency, settings.aws_conn_id
        )
        planned_days.append({"job": job.to_dict(), "plan": day_plan.to_dict()})
        files += plan.request_files(dt, day_plan.shards, settings.aws_conn_id)
        log.info(
            "dt=%s: %d images, %d carried over, %d to classify in %d request file(s)",
            dt,
            day_plan.images,
            day_plan.carried,
            day_plan.to_classify,
            len(day_plan.shards),
        )
    run_key, _ = run_identity(run_id, logical_date, run_after)
    prefix = plan.run_prefix(f"{settings.storage_uri}/{storage.BACKLOG}", DAG_ID, run_key, days[0], days[-1])
    identity = {"model": model_name, "version": version, "resources": asdict(res)}
    jobs = plan.chunk_jobs(
        files, prefix=prefix, run_key=run_key, identity=identity, images_per_job=params["images_per_job"]
    )
    result = estimate_backlog(settings, backend, res, sum(f.images for f in files), len(jobs), params)
    log.info("pre-flight for %s..%s:\n%s", days[0], days[-1], "\n".join(result.lines()))
    refuse_if_over(result, params["budget_usd"], f"backlog {days[0]}..{days[-1]}")
    for job in jobs:
        if len(job.files) < res.instance_count:
            log.warning(
                "job %s has %d request file(s) for %d instances: Batch Transform gives each instance whole "
                "files, so some instances will idle (lower images_per_file)",
                job.name,
                len(job.files),
                res.instance_count,
            )
    run = {
        "resources": asdict(res),
        "model_name": model_name,
        "from_date": days[0],
        "to_date": days[-1],
        "estimate": result.to_dict(),
    }
    return {"days": planned_days, "jobs": [job.to_dict() for job in jobs], "run": run}


def write_requests(jobs: list[dict[str, Any]], day_doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Write the day's request files (and their indexes) into the jobs that hold them; what each file holds."""
    day = PartitionJob.from_dict(day_doc["job"])
    written = []
    for job in map(TransformJob.from_dict, jobs):
        for request in (f for f in job.files if f.dt == day.dt):
            result = requests.write_request_file(
                day, Shard(**request.shard), job.input_uri + request.name, job.index_uri(request)
            )
            written.append({"job": job.name, "file": request.name, **asdict(result)})
    log.info("dt=%s: %d request file(s), %d records", day.dt, len(written), sum(w["records"] for w in written))
    return written


def transform_requests(
    settings: Settings, jobs: list[dict[str, Any]], run: dict[str, Any], written: list[list[dict[str, Any]]]
) -> list[dict[str, Any]]:
    """The CreateTransformJob request of every job that has records to send (MaxPayloadInMB sized to its largest
    record); a job whose images were all rejected has nothing to run."""
    files = [f for day in written or [] for f in day or []]
    backend = backlog_backend(settings)
    out = []
    for job in map(TransformJob.from_dict, jobs):
        mine = [f for f in files if f["job"] == job.name]
        if len(mine) != len(job.files):
            raise RuntimeError(f"job {job.name}: {len(mine)} of its {len(job.files)} request files were written")
        if not any(f["records"] for f in mine):
            log.info("job %s: every image was rejected; nothing to transform", job.name)
            continue
        biggest = max(f["max_record_bytes"] for f in mine)
        out.append(
            plan.transform_request(
                job,
                TransformResources(**run["resources"]),
                model_name=run["model_name"],
                max_record_bytes=biggest,
                uri=backend.uri,
            )
        )
    return out


def commit_day(
    settings: Settings,
    jobs: list[dict[str, Any]],
    run: dict[str, Any],
    day_doc: dict[str, Any],
    thresholds: dict[str, Any],
    run_id: str,
    dag_id: str,
    ti: Any | None = None,
) -> dict[str, Any]:
    """Join the day's outputs into rows, check that every image is accounted for, record the day's share of the
    billed time, then gate and publish exactly as classify_images does. Returns the asset event's extra: the day's
    outcome as flat fields (run_notes.DayOutcome), which cost_report sums up in the run's note."""
    from tasks.model.taxonomy import load_taxonomy

    backend = backlog_backend(settings)
    day, day_plan = PartitionJob.from_dict(day_doc["job"]), PartitionPlan.from_dict(day_doc["plan"])
    mine = [job for job in map(TransformJob.from_dict, jobs) if any(f.dt == day.dt for f in job.files)]
    follow_ups = {job.name: plan.records_job(job) for job in mine}  # re-sent records of a Failed job (records.py)
    outcomes = {job.name: backend.outcome(job) for job in [*mine, *follow_ups.values()]}
    taxonomy = load_taxonomy(day.record.taxonomy)
    results = [
        join.join_file(day, job, request, outcomes[job.name], taxonomy, outcomes[follow_ups[job.name].name])
        for job in mine
        for request in job.files
        if request.dt == day.dt
    ]
    staged = classification.collect_shards(day_plan, results)
    billed = join.billed_share(day.dt, [*mine, *follow_ups.values()], outcomes)
    staged = replace(staged, busy_seconds=billed + day_plan.carried_busy_seconds)
    res = TransformResources(**run["resources"])
    entry = ledger.classification_entry(
        day.dt,
        EndpointPricing(settings.backend, backend.price_region, res.instance_type, res.instance_count),
        endpoint=day.endpoint_name,
        model_version=day.model_version,
        stats=staged.stats,
        busy_seconds=staged.busy_seconds,
        run_id=run_id,
        dag_id=dag_id,
    )
    ledger.record(storage.root(settings) / storage.COSTS, entry)  # spent whether or not the gate lets the day in
    log.info(
        "dt=%s: %d rows %s; %.1f s x %d instance(s) billed, $%.6f",
        day.dt,
        staged.stats["rows"],
        staged.stats["statuses"],
        staged.busy_seconds,
        res.instance_count,
        entry.cost_usd,
    )
    verdict = commit.gate(settings, day_plan, staged, QualityThresholds.from_params(thresholds))
    summary = commit.publish(day, day_plan, staged, verdict, ti)
    costs = {"cost_usd": entry.cost_usd, "usd_per_1000_images": entry.usd_per_1000_images}
    return steps.day_outcome(day_plan, summary, verdict, costs).extra()


def cost_report(
    settings: Settings, run: dict[str, Any], committed: list[dict[str, Any] | None], ti: Any | None = None
) -> dict[str, str]:
    """The cost report up to to_date, then the run's note: one line per day committed (commit_day's extras), and
    the days that were not (their commit_day failed: quality gate, join)."""
    days = plan.days_between(run["from_date"], run["to_date"])
    if ti is not None:
        run_notes.write_note(ti.dag_id, ti.run_id, run_notes.range_note(days, [c for c in committed or [] if c]))
    return commit.write_cost_report(settings, run["to_date"])
