"""Classify each day's new images through the serving endpoint, with cost accounting (pipeline 4 of 4)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import CronDataIntervalTimetable, Param, PokeReturnValue, TriggerRule, dag, task

from tasks.common import storage
from tasks.common.assets import PREDICTIONS
from tasks.common.dag_defaults import LATE_DATA_WAIT, NIGHTLY_WORK, SETTINGS, TAGS, default_args, nightly_deadline
from tasks.common.settings import BACKENDS
from tasks.nightly.partitions import POKE_INTERVAL, WAIT_TIMEOUT, NightlySchedule, say_when_nothing_ran
from tasks.nightly.quality import QualityThresholds

SCHEDULE = NightlySchedule.from_env()

DOC = f"""
### Classify images (nightly, `{SCHEDULE.cron}` UTC, from {SCHEDULE.start_date})
**Which day:** a run processes **dt = the UTC day of its logical date** (`incoming/dt=D/` →
`predictions/dt=D/`). Scheduled runs have the data interval [D, D+1 day) and logical date D and start when D is
over, so `bin/airflow backfill create --dag-id classify_images --from-date A --to-date B` makes exactly one run per
dt in [A, B], and `bin/airflow dags test classify_images D` processes D (for D before the start date Airflow
creates no tasks: the run is marked **failed** with a run note **NOTHING RAN** naming the backfill command that
processes D — never a green run that did nothing). **A manual run made during its logical date's day — the
trigger form with its default logical date, now — processes the last complete day (yesterday)**; pick an earlier
logical date for another day. A manual run without a logical date processes the last complete day too. Every run
ends with a **run note**: dt, images listed/classified/carried, statuses, quality verdict, $ and $/1000 images,
model version (the asset event's extra: the same fields, flat). One active run per dt: a second one fails at
`plan_partition`. Catchup covers every dt from `PIPELINE_CLASSIFY_START_DATE`; older days need a backfill
(`--max-active-runs 1` or 2: the pool, not the backfill, protects the endpoint).

`wait_for_partition` → `plan_partition` → `check_budget` → `classify_shard` ×N (pool `endpoint_inference`) →
`collect_shards` → `quality_gate` ‖ `record_costs` → `publish_partition` (asset **predictions**, the run note);
`record_costs` → `cost_report`

Each image gets one row (ok | invalid | rejected | failed, with a reason). A run writes under
`predictions/dt=D/run=<token>/` and becomes visible only when `_SUCCESS` lists its files; a rerun replaces the
partition atomically and deletes the replaced files. Reruns skip images already classified by the same model
version (same key, size and version of the file) unless `reclassify` is set; `failed` and `invalid` rows are always
retried. Symlinks, FIFOs and unsafe file names are never read: they get `rejected` rows with the reason.

**Runbook**
- **plan_partition: no endpoint recorded**: run `deploy_endpoint`. **wants endpoint …**: the run is pinned to another
  endpoint (params `endpoint_name`/`endpoint_backend`); clear them or redeploy.
- **check_budget: estimated $… above the budget**: nothing was spent. Raise `budget_usd` for this run if expected.
  Before a long backfill: `llava-pipelines estimate-cost --from-date A --to-date B --budget-usd X`.
- **classify_shard failed or killed**: the endpoint is down or the task timed out; retries resume: a shard flushes
  its answers every 25 answers or 5 s (`run=<token>/shard-N.answers/`), and its retry sends only the images
  without one; a new run of the dt (or a clear from `plan_partition`) carries the final answers of runs that never
  committed. Throttling and bad answers do not fail a shard: they become `failed`/`invalid` rows. **circuit
  breaker**: `max_consecutive_failures` requests in a row failed (a hung or dead endpoint); fix it and clear.
- **plan_partition: … is being processed by DagRun …**: another run of the same dt is queued or running (one run
  per dt: `predictions/dt=D/_CLAIM`, taken over as soon as that run has ended); wait for it.
  **param incoming_uri … outside**: the param names something outside the storage root and
  `PIPELINE_INPUT_ROOTS`; nothing was read.
- **publish_partition: … is being published by run … (task …); its lease expires at …**: another run holds
  `predictions/dt=D/_LEASE` (120 s, renewed every 30 s while its holder works). A killed publisher is no obstacle:
  its retry, a clear, or a new run takes the lease over at once when Airflow no longer runs the task instance
  named there, else when it expires (at most 2 min after the kill); clear this task after that time. Only if you
  know the holder is dead and cannot wait: delete that `_LEASE` file, then clear. If the holder is alive, it is
  publishing this dt: nothing to do. **listed file(s) missing**: a concurrent run of the dt published first and
  replaced this run's files; the partition is consistent (it holds that run's rows).
- **collect_shards: accounting is off**: a bug, never data: open an issue with the log. Nothing was published.
- **quality_gate failed**: invalid/failed rate or label shift over its threshold (values in the log); the new rows
  are NOT published, the previous version of dt stays. Fix the endpoint/model and clear the run, or rerun with
  `quality.on_violation = warn` to publish anyway.
- Late data: an empty partition is waited for until `late_data_wait_minutes` after the day ends (each look logs
  the dt, where, what it found and until when), then committed as zero images (run note: **NO IMAGES**, quality
  **no data**). **Deadline "nightly run overdue"** (4 h after the run was queued) = the longest late-data wait
  (2 h, the param's maximum: a scheduled run is queued when its day ends) + 2 h for the night's work, so it never
  pages while the sensor is still waiting as designed; it pages a night stuck after that (endpoint, pool).
  Images that arrive later: clear the run (only the new images are classified). **wait_for_partition: … beyond
  this sensor's 1 day timeout**: the dt has not happened yet (a manual run or `dags test` of a future day): run it
  once the day is over.
- Query: `llava-pipelines predictions-summary --from-date A --to-date B`; costs:
  `llava-pipelines cost-report`. Read predictions only through `_SUCCESS`
  (tasks.nightly.predictions.read_partition).
"""


@dag(
    dag_id="classify_images",
    description="Nightly: classifies one day's incoming/dt=D/ images into predictions/dt=D/, with quality and cost.",
    schedule=CronDataIntervalTimetable(SCHEDULE.cron, timezone="UTC"),
    start_date=datetime.combine(SCHEDULE.start_date, datetime.min.time(), UTC),
    catchup=True,
    max_active_runs=2,  # the endpoint_inference pool bounds the load on the endpoint across runs
    dagrun_timeout=timedelta(hours=12),  # a hung night fails instead of blocking the next ones
    on_success_callback=say_when_nothing_ran,  # a dt before the start date runs no task: never silently
    # pages when a night is not done 4 h after it was queued: the longest late-data wait + the night's work
    deadline=nightly_deadline(LATE_DATA_WAIT + NIGHTLY_WORK),
    tags=[*TAGS, "classification"],
    doc_md=DOC,
    default_args=default_args(execution_timeout=timedelta(minutes=30)),
    params={
        "incoming_uri": Param(
            storage.incoming_template(SETTINGS),
            type="string",
            description="The day's images; {dt} becomes YYYY-MM-DD.",
        ),
        "endpoint_name": Param(
            None,
            type=["null", "string"],
            description="None: the deployed one; set: refuse any other.",
            section="Endpoint",
        ),
        "endpoint_backend": Param(
            None,
            type=["null", "string"],
            enum=[None, *BACKENDS],
            description="None: the deployed one's.",
            section="Endpoint",
        ),
        "shard_size": Param(
            500, type="integer", minimum=1, description="Images per mapped classify_shard task.", section="Throughput"
        ),
        "concurrency": Param(
            8, type="integer", minimum=1, maximum=256, description="Requests in flight per shard.", section="Throughput"
        ),
        "budget_usd": Param(
            25.0, type="number", minimum=0, description="Refuse a partition estimated above this.", section="Budget"
        ),
        "assumed_images_per_second": Param(
            1.0,
            type="number",
            exclusiveMinimum=0,
            description="Throughput estimate until one is measured.",
            section="Budget",
        ),
        "late_data_wait_minutes": Param(
            LATE_DATA_WAIT // timedelta(minutes=1),
            type="integer",
            minimum=0,
            maximum=LATE_DATA_WAIT // timedelta(minutes=1),  # the deadline allows no longer wait (runbook)
            description="After the day, for late data; at most the default: the 4 h deadline counts on it.",
        ),
        "reclassify": Param(False, type="boolean", description="Ignore rows already classified by this model."),
        "request_timeout_s": Param(
            60.0, type="number", exclusiveMinimum=0, description="Per endpoint request.", section="Endpoint"
        ),
        "max_retries": Param(
            4, type="integer", minimum=0, description="Per image: throttling, 5xx, timeouts.", section="Endpoint"
        ),
        "max_consecutive_failures": Param(
            20,
            type="integer",
            minimum=1,
            description="Circuit breaker: a shard stops after this many failed requests in a row.",
            section="Endpoint",
        ),
        "quality": Param(
            QualityThresholds().__dict__,
            type="object",
            description="Gate thresholds; on_violation: warn (publish, record) or fail (do not publish).",
        ),
    },
)
def classify_images():
    @task.sensor(
        poke_interval=POKE_INTERVAL.total_seconds(),
        timeout=WAIT_TIMEOUT.total_seconds(),
        mode="reschedule",
        doc_md="Waits for the first image of dt, at most until `late_data_wait_minutes` after the day; never fails "
        "for a missing partition (that is a day with zero images). Each look logs the dt, where it looks and until "
        "when. **Runbook** — **the wait for late data would last until …**: the dt has not happened yet (a manual run "
        "or `dags test` of a future day); run it once the day is over.",
    )
    def wait_for_partition(params=None, logical_date=None, data_interval_start=None, dag_run=None) -> PokeReturnValue:
        from tasks.nightly.steps import look_for_partition

        run_after = dag_run.run_after
        done, found = look_for_partition(SETTINGS, params, logical_date, data_interval_start, run_after=run_after)
        return PokeReturnValue(is_done=done, xcom_value=found)

    @task(
        doc_md="""Lists dt into a manifest, carries over rows already classified by this model, and shards the rest.

**Runbook** — **no endpoint recorded**: run `deploy_endpoint`, then clear this task. **the deployed endpoint has
endpoint_name=…; this run: …**: the run is pinned (params `endpoint_name`/`endpoint_backend`) to another endpoint;
trigger it again without the pin, or redeploy the pinned one. A local server that died is restarted here.
**… is being processed by DagRun …**: another run of the same dt is active (one run per dt); wait for it."""
    )
    def plan_partition(found: dict, params=None, dag_run=None, ti=None) -> dict:
        from functools import partial

        from tasks.nightly.steps import plan

        state = partial(ti.get_dagrun_state, dag_run.dag_id)
        return plan(SETTINGS, found["dt"], found["present"], params, dag_run.run_id, state)

    @task(
        doc_md="""Estimates the partition's cost from measured throughput and the price table; refuses (no retry)
above `budget_usd` before anything is spent. Returns the shards it approves.

**Runbook** — **estimated $… above the budget**: nothing was spent. If the volume is expected, trigger the day again
(Trigger → logical date D, or a backfill of D) with a higher `budget_usd`; if not, look at `incoming/dt=D/` first."""
    )
    def check_budget(planned: dict, params=None) -> list[dict]:
        from tasks.nightly.steps import check_budget

        return check_budget(SETTINGS, planned, params)

    @task(
        pool="endpoint_inference",
        execution_timeout=timedelta(hours=2),
        # The label each mapped instance shows in the UI: which dt, which shard, which manifest rows.
        map_index_template="dt={{ task.op_kwargs['job']['dt'] }} shard {{ task.op_kwargs['shard']['index'] }} "
        "(rows {{ task.op_kwargs['shard']['offset'] }}.."
        "{{ task.op_kwargs['shard']['offset'] + task.op_kwargs['shard']['count'] }})",
        doc_md="""Classifies one shard (manifest rows offset..offset+count) with bounded concurrency; logs progress
(ok/invalid/failed so far, ETA) and writes its rows as one Parquet file. Bad images and bad answers are rows, not
failures.

**Runbook** — **failed or timed out**: the endpoint is down or far too slow (the log's last progress line says how far
it got). Check the endpoint (`deploy_endpoint`'s smoke test, its logs), then clear the failed shards only: a shard
rewrites its own file, the others are kept.""",
    )
    def classify_shard(job: dict, shard: dict) -> dict:
        from tasks.nightly.steps import classify

        return classify(job, shard)

    @task(
        trigger_rule=TriggerRule.NONE_FAILED,  # a partition with nothing to classify maps zero shards
        doc_md="Verifies that shard rows + carried rows == images listed, and sums up the statistics.",
    )
    def collect_shards(planned: dict, results: list[dict]) -> dict:
        from tasks.nightly.steps import collect

        return collect(planned, results)

    @task(
        doc_md="""Invalid rate, failed rate and label shift against trailing partitions; warn or fail per params.

**Runbook** — **failed**: a threshold was crossed (values and thresholds in the log); nothing was published, the
previous version of dt stays. Endpoint or model trouble: fix it and clear the run. A real change in the data:
trigger the day again with `quality.on_violation = warn` (publishes, records the violation)."""
    )
    def quality_gate(planned: dict, staged: dict, params=None, ti=None) -> dict:
        from tasks.nightly.steps import quality_gate

        return quality_gate(SETTINGS, planned, staged, params["quality"], ti)

    @task(doc_md="Ledger rows for dt: the classification (busy time, images, tokens) and the endpoint's idle time.")
    def record_costs(planned: dict, staged: dict, dag_run=None) -> dict:
        from tasks.nightly.steps import record_costs

        return record_costs(SETTINGS, planned, staged, dag_run.run_id, dag_run.dag_id)

    @task(
        outlets=[PREDICTIONS],
        doc_md="Under the partition's lease, writes `_SUCCESS` (the commit), deletes replaced runs, emits the asset, "
        "and writes the **run note**: dt, images listed/classified/carried, statuses, quality verdict, $ and "
        "$/1000 images, model version (the asset event's extra has the same flat fields). **Runbook** — **being "
        "published by run …**: see the DAG's runbook: a killed holder's lease is taken over as soon as Airflow no "
        "longer runs it, or at its expiry (≤ 2 min). **run note … not written**: the REST API could not be reached "
        "(the `airflow_api` connection); the commit is done, the note's text is in this log.",
    )
    def publish_partition(planned: dict, staged: dict, verdict: dict, costs: dict, outlet_events=None, ti=None) -> dict:
        from tasks.nightly.steps import publish

        summary = publish(planned, staged, verdict, ti, costs)
        outlet_events[PREDICTIONS].extra = summary
        return summary

    @task(doc_md="Writes `costs/reports/day=<dt>/costs.{csv,md,png}` for the 30 days up to dt.")
    def cost_report(planned: dict, recorded: dict) -> dict:
        from tasks.nightly.steps import cost_report

        return cost_report(SETTINGS, planned)

    found = wait_for_partition()
    planned = plan_partition(found)
    results = classify_shard.partial(job=planned["job"]).expand(shard=check_budget(planned))
    staged = collect_shards(planned, results)
    costs = record_costs(planned, staged)  # priced first: the run note and the asset event carry the cost
    publish_partition(planned, staged, quality_gate(planned, staged), costs)
    cost_report(planned, costs)


classify_images()
