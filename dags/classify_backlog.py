"""Classify months of history in a few Batch Transform jobs, into the nightly partitions (manual)."""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, TriggerRule, XComArg, dag, task

from tasks.backlog import plan
from tasks.backlog.steps import TRANSFORM_POOL, backlog_backend
from tasks.common import storage
from tasks.common.assets import PREDICTIONS
from tasks.common.dag_defaults import SETTINGS, TAGS, default_args
from tasks.nightly.quality import QualityThresholds

BACKEND = backlog_backend(SETTINGS)

DOC = """
### Classify a backlog (manual)
Every `dt` from `from_date` to `to_date` (inclusive) is planned as the nightly run plans it — the same listing, the
same carry-over of rows already classified by this model version — and committed into **the same
`predictions/dt=D/` format** (`_SUCCESS` manifest, one row per image, same statuses and reasons, same quality gate,
the same `classification` rows in the cost ledger). Readers and a later nightly rerun cannot tell the paths apart.

`plan_backlog` → `write_requests` ×days → `transform_requests` → `canary_request` → `canary` → `transform` ×jobs
(pool `batch_transform`: one job at a time) → `record_requests` → `transform_records` ×(jobs that ended Failed) →
`commit_day` ×days (asset **predictions**) → `cost_report`

On SageMaker each job is a Batch Transform job on the SageMaker Model behind the deployed endpoint; locally a small
runner does the same against the local endpoint. Use this instead of `backfill create` on `classify_images` when a
range is large enough that an endpoint would run for days (see the README for the numbers); the endpoint keeps
serving the nightly traffic meanwhile.

**Runbook**
- **plan_backlog: param incoming_uri … outside**: a day's `incoming_uri` is outside the storage root and
  `PIPELINE_INPUT_ROOTS`; refused before anything was listed, read or asked. Fix the param.
- **plan_backlog: BudgetExceeded / misses the deadline**: nothing was spent; the log has the estimate (images,
  instance-hours, wall time, $, the instance count the deadline needs). Raise `budget_usd`, `instance_count` or
  `deadline_hours`. Before triggering: `python -m tasks.cli estimate-backlog --from-date A --to-date B ...`.
- **plan_backlog: not the deployed one**: `model_version` must be the deployed model; deploy it first.
- **canary failed**: before any large job, the first 3 records of the first request file ran as one small job (the
  first job's request: same model and settings, one instance) and its `.out` was read by the join. The log has
  SageMaker's FailureReason, or the file and line that could not be parsed and why (the expected line is
  `{"key", "SageMakerOutput"}`: AWS DataProcessing.JoinSource). No large job was created and commit_day commits
  nothing. Fix the cause and trigger a new run (clearing the canary re-reads the same ended job).
- **transform failed (Failed/Stopped)**: SageMaker's FailureReason is in the log; no retry (it would attach to the same
  ended job). A file with one rejected record gets no `.out` (Batch Transform's unit of output is the file), so for a
  **Failed** job `record_requests` writes every record of its unanswered files to a file of its own and
  `transform_records` sends them again in one follow-up job (`records-<job>`, same model and settings): only the
  records that fail alone become `failed` rows, with both jobs' reasons. commit_day still commits every day. Trigger
  a new run for the range to retry the failed rows (only failed rows are classified again).
- **commit_day: no line of the joined shape**: a non-empty `.out` whose lines are not `{"key", "SageMakerOutput"}`
  objects fails the day loudly (nothing committed) instead of turning every image into a `failed` row; lines that
  cannot be parsed among good ones are counted and named in the failed rows' reason.
- **transform still InProgress after the wait**: the job keeps running; clear the task to attach and wait again.
- **commit_day: quality gate failed**: that day is not published (the previous version stays); its cost is recorded.
- **commit_day: … being published by run …**: another run holds the day's publish lease (a nightly run of the
  same dt); exactly as in classify_images' runbook: a killed holder is taken over at once
  when Airflow no longer runs it, else at its expiry (≤ 2 min); clear the day's commit_day after that.
- A retry or rerun of the same run attaches to the jobs it made; nothing is billed twice.
"""


@dag(
    dag_id="classify_backlog",
    description="Classifies a range of past days (Batch Transform) into the nightly predictions/dt=D/ partitions.",
    schedule=None,
    start_date=datetime(2026, 11, 1),
    catchup=False,
    max_active_runs=1,
    tags=[*TAGS, "classification", "backlog"],
    doc_md=DOC,
    default_args=default_args(execution_timeout=timedelta(hours=6)),
    params={
        "from_date": Param(
            None,
            type=["null", "string"],
            format="date",
            description="First dt (YYYY-MM-DD); empty: a week before to_date.",
        ),
        "to_date": Param(
            None, type=["null", "string"], format="date", description="Last dt, inclusive; empty: yesterday."
        ),
        "model_version": Param(None, type=["null", "string"], description="Empty: the deployed (promoted) model."),
        "instance_type": Param(None, type=["null", "string"], description=f"Empty: {BACKEND.default_instance_type}."),
        "instance_count": Param(
            plan.DEFAULT_INSTANCE_COUNT, type="integer", minimum=1, maximum=100, description="Instances per job."
        ),
        "concurrency_per_instance": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            maximum=100,
            description="MaxConcurrentTransforms; empty: LMI's max_rolling_batch_size (capped by 100 MB / payload).",
        ),
        "budget_usd": Param(100.0, type="number", minimum=0, description="Refuse a run estimated above this."),
        "deadline_hours": Param(None, type=["null", "number"], exclusiveMinimum=0, description="Refuse if later."),
        "assumed_images_per_second": Param(
            None,
            type=["null", "number"],
            exclusiveMinimum=0,
            description="Per instance, used only until the ledger has measured this instance type.",
        ),
        "images_per_file": Param(
            plan.DEFAULT_IMAGES_PER_FILE, type="integer", minimum=1, description="Images per request file (shard)."
        ),
        "images_per_job": Param(
            plan.DEFAULT_IMAGES_PER_JOB, type="integer", minimum=1, description="Images per transform job."
        ),
        "invocation_timeout_s": Param(
            plan.DEFAULT_INVOCATION_TIMEOUT_S, type="integer", minimum=1, maximum=3600, description="Per record."
        ),
        "invocation_retries": Param(
            plan.DEFAULT_INVOCATION_RETRIES, type="integer", minimum=0, maximum=3, description="Per record."
        ),
        "reclassify": Param(False, type="boolean", description="Ignore rows already classified by this model."),
        "incoming_uri": Param(
            storage.incoming_template(SETTINGS), type="string", description="{dt} becomes YYYY-MM-DD."
        ),
        "quality": Param(QualityThresholds().__dict__, type="object", description="As in classify_images."),
    },
)
def classify_backlog():
    @task(
        doc_md="Pre-flight: lists every day, carries over what this model already classified, groups request "
        "files into jobs, prints images / instance-hours / wall time / $ / instances for the deadline, and refuses "
        "(no retry) above the budget or past the deadline before anything is spent. Returns the days; the jobs and "
        "the run's settings are its `jobs` and `run` XComs.",
    )
    def plan_backlog(params=None, run_id=None, logical_date=None, dag_run=None, ti=None) -> list:
        from tasks.backlog.steps import plan_backlog

        planned = plan_backlog(SETTINGS, params, run_id, logical_date, dag_run.run_after)
        ti.xcom_push(key="jobs", value=planned["jobs"])
        ti.xcom_push(key="run", value=planned["run"])
        return planned["days"]

    @task(
        map_index_template="{{ task.op_kwargs['day']['job']['dt'] }}",
        doc_md="Writes the day's JSON Lines request files (the endpoint client's exact bodies) into the jobs that "
        "hold them, with an index per file. Deterministic: a retry rewrites the same files.",
    )
    def write_requests(jobs: list, day: dict) -> list:
        from tasks.backlog.steps import write_requests

        return write_requests(jobs, day)

    @task(
        doc_md="Builds each job's CreateTransformJob request once all its files are written (payload limit "
        "from its largest record). Returns what `transform` maps over."
    )
    def transform_requests(jobs: list, run: dict, written: list) -> list:
        from tasks.backlog.steps import transform_requests

        return transform_requests(SETTINGS, jobs, run, written)

    @task(
        trigger_rule=TriggerRule.ALL_DONE,  # a failed job's days are still committed, its images as failed rows
        outlets=[PREDICTIONS],
        map_index_template="{{ task.op_kwargs['day']['job']['dt'] }}",
        doc_md="Joins the day's `.out` lines into rows (no answer: a `failed` row saying why), checks rows == "
        "images, records the day's share of the billed time in the ledger, then quality gate and commit.",
    )
    def commit_day(jobs: list, run: dict, day: dict, params=None, run_id=None, outlet_events=None, ti=None) -> dict:
        from tasks.backlog.canary import require_passed
        from tasks.backlog.steps import commit_day

        require_passed(ti, day["job"]["dt"])  # a failed canary: nothing ran, nothing is committed
        summary = commit_day(SETTINGS, jobs, run, day, params["quality"], run_id, ti.dag_id, ti)
        outlet_events[PREDICTIONS].extra = summary
        return summary

    @task(
        doc_md="Writes the cost report for the 30 days up to to_date, whatever the days' outcome (a teardown: "
        "it runs after them all and does not decide the run's state, so a failed day fails the run), then the "
        "**run note**: the range, days committed, images, $, and one line per day (statuses, quality verdict, $)."
    )
    def cost_report(run: dict, committed: list, ti=None) -> dict:
        from tasks.backlog.steps import cost_report

        return cost_report(SETTINGS, run, committed, ti)

    days = plan_backlog()
    jobs, run = XComArg(days.operator, key="jobs"), XComArg(days.operator, key="run")
    written = write_requests.partial(jobs=jobs).expand(day=days)
    transformed = BACKEND.transform(transform_requests(jobs, run, written), TRANSFORM_POOL)
    committed = commit_day.partial(jobs=jobs, run=run).expand(day=days)
    transformed >> committed
    cost_report(run, committed).as_teardown()


classify_backlog()
