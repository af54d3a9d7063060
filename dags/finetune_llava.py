"""Fine-tune LLaVA-NeXT on a curated dataset, evaluate it on the held-out split, promote it through a gate
(pipeline 2 of 4)."""

from __future__ import annotations

from airflow.sdk import Param, dag, task

from tasks.common.assets import CURATED_DATASET, PROMOTED_MODEL
from tasks.common.dag_defaults import SETTINGS, TAGS, default_args
from tasks.training import steps
from tasks.training.approval import PromotionApproval
from tasks.training.plan import MAX_RUN_SECONDS
from tasks.training.sizing import DEFAULT_INSTANCE_TYPE, DEFAULT_MAX_RUN_SECONDS, DEFAULT_MAX_WAIT_SECONDS

TRAINING = steps.training_backend(SETTINGS)

DOC = f"""
### Fine-tune LLaVA-NeXT (backend: `{SETTINGS.backend}`)
Runs when `curate_dataset` emits **curated_dataset**, or by hand with params. TRL SFT through
`include/training/launch.py` (DeepSpeed ZeRO-3 on several GPUs): a **SageMaker training job** on the `sagemaker`
backend, the **same script as a subprocess** on an offline tiny LLaVA-NeXT on the `local` backend.

`plan` → `prepare_training` → `train` → `record_cost` + `evaluate` → `approve_promotion` → `promote`

**Where things land** (`models/<version>/`, version = `<taxonomy>-<run time>-<run hash>`): `metrics.json`,
`confusion_matrix.png`, `eval_predictions.jsonl`; the model in `model/` locally; on SageMaker where
DescribeTrainingJob's `ModelArtifacts` says (uncompressed, `<job>/output/model/`), the script's evaluation files in
its `evaluation/` subfolder. SageMaker checkpoints go to `models/checkpoints/<training key>/` (dataset, base model,
hyperparameters, instance type and count): a rerun of the same training resumes them. `models/registry.json` lists
versions; `production` is what gets deployed.

**Runbook**
- **plan: no curated dataset**: run `curate_dataset`, or pass `dataset_uri`.
- **plan: training plan refused** (SageMaker): the sized plan (steps x the declared seconds per step of the instance
  type, tasks/training/sizing.py) cannot finish inside `max_run_seconds`; the message says what fits (fewer epochs,
  or the `max_run_seconds` needed). Nothing was uploaded or paid for. The plan task logs steps, hours, checkpoint
  size and interval of every sized plan.
- **train failed**: see the task's runbook. The job name comes from the run's logical date (asset-triggered runs:
  the run id), so clearing or rerunning reattaches to its job; to train again after a Failed/Stopped job, trigger a
  run with another logical date. After a **Stopped** job (MaxRuntime) that run resumes the checkpoints the message
  names, as long as the dataset and training config are the same (raise `max_run_seconds`; it is not in the key).
- **evaluate: no eval_predictions.jsonl**: the script did not finish; the train log says why.
- **promote skipped**: the gate said no, or a reviewer rejected it (reason in the log and in `registry.json`).
  Nothing is deployed.
- **approve_promotion waiting** (`require_approval` on — recommended in production): answer it under the run's
  Required Actions; the request shows the metrics and the confusion matrix.
- Cost: one ledger row per job (`costs/ledger/kind=training/`), shared with nightly classification.
"""


@dag(
    dag_id="finetune_llava",
    description="Fine-tunes LLaVA-NeXT on a curated dataset, evaluates it and promotes it if it passes the gate.",
    schedule=[CURATED_DATASET],
    catchup=False,
    max_active_runs=1,  # one writer of registry.json at a time
    tags=[*TAGS, "training"],
    doc_md=DOC,
    default_args=default_args(),
    params={
        "dataset_uri": Param(
            None, type=["null", "string"], description="None: the triggering event's, else the newest."
        ),
        "base_model": Param(
            None, type=["null", "string"], description="Hub id, s3:// prefix or directory; none: default."
        ),
        "hyperparameters": Param(
            dict(TRAINING.hyperparameters),
            type="object",
            description="Flags of include/training/train.py; override the backend's defaults key by key.",
        ),
        "instance_type": Param(
            DEFAULT_INSTANCE_TYPE,
            type="string",
            description="SageMaker training instance (one with a declared speed in tasks/training/sizing.py).",
            section="SageMaker",
        ),
        "instance_count": Param(1, type="integer", minimum=1, section="SageMaker"),
        "spot": Param(True, type="boolean", description="SageMaker managed spot training.", section="SageMaker"),
        "max_run_seconds": Param(
            DEFAULT_MAX_RUN_SECONDS,
            type="integer",
            minimum=60,
            maximum=MAX_RUN_SECONDS,
            description="At most 28 days (AWS limit). The plan is refused when its estimate does not fit.",
            section="SageMaker",
        ),
        "max_wait_seconds": Param(
            DEFAULT_MAX_WAIT_SECONDS, type="integer", minimum=60, description="Spot: wait + run.", section="SageMaker"
        ),
        "local_processes": Param(
            1, type="integer", minimum=1, description="Local: >= 2 runs ZeRO-3 on CPU (measured 2x slower per step)."
        ),
        "min_accuracy": Param(0.9, type="number", minimum=0, maximum=1, section="Promotion gate"),
        "tolerance": Param(
            0.01,
            type="number",
            minimum=0,
            maximum=1,
            description="Allowed drop vs production.",
            section="Promotion gate",
        ),
        "require_approval": Param(
            False,
            type="boolean",
            description="Wait for a person to approve the promotion in the UI (Required Actions), with the metrics "
            "and confusion matrix. Off locally; recommended on in production.",
            section="Promotion gate",
        ),
    },
)
def finetune_llava():
    @task(
        doc_md="""Resolves the dataset and fixes this run's version, job name and paths.

**Runbook** — **no curated dataset**: run `curate_dataset`, or trigger with `dataset_uri`. **not a complete curated
dataset** / **no held-out test split**: curate it again (with `test_fraction` > 0)."""
    )
    def plan(params=None, dag=None, dag_run=None, triggering_asset_events=None) -> dict:
        events = triggering_asset_events.get(CURATED_DATASET, []) if triggering_asset_events else []
        return steps.plan(SETTINGS, params, dag_id=dag.dag_id, dag_run=dag_run, events=events)

    @task(doc_md="Writes the job's billable time × the price table into the shared cost ledger (one row per job).")
    def record_cost(plan: dict, outcome: dict, run_id=None) -> dict:
        return steps.record_cost(SETTINGS, plan, outcome, run_id)

    @task(
        doc_md="""Scores the test split's answers with the strict parser; writes metrics.json and the plot, and
registers the version as a **candidate** (a reviewer sees its metrics and confusion matrix before `promote` decides).

**Runbook** — **no eval_predictions.jsonl**: the training script did not finish; the train task's log says why.
Retrying cannot help: fix the cause, then trigger a new run."""
    )
    def evaluate(plan: dict, outcome: dict, dag=None, run_id=None) -> dict:
        return steps.evaluate(SETTINGS, plan, outcome, {"dag_id": dag.dag_id, "run_id": run_id})

    @task(doc_md="Queues the likely mislabels evaluate flagged in the training data for review (the Review page).")
    def queue_mislabels(plan: dict) -> int:
        from tasks.review.steps import queue_mislabels

        return queue_mislabels(SETTINGS, plan["version"])

    @task(
        outlets=[PROMOTED_MODEL],
        doc_md="""Registers the version (with this run's id) and promotes it if it passes the gate and no reviewer
        rejected it; else skips, with the reason in the log and in `registry.json`.

**Runbook** — **skipped**: not an error; nothing is deployed. Gate refusal: the log says which bar it missed
(`min_accuracy`, or worse than production by more than `tolerance`); retrain, or rerun with other gate params if the
bar is wrong. **Rejected in review**: the reviewer's name is in the decision; talk to them.""",
    )
    def promote(
        plan: dict, metrics: dict, review: dict, outcome: dict, params=None, outlet_events=None, dag=None, run_id=None
    ):
        run = {"dag_id": dag.dag_id, "run_id": run_id}
        promoted = steps.promote(SETTINGS, plan, metrics, params, review, run, outcome)
        outlet_events[PROMOTED_MODEL].extra = {key: promoted[key] for key in ("version", "model_uri", "taxonomy")}
        return promoted

    planned = plan()
    outcome = TRAINING.train(planned, pool=steps.TRAINING_POOL)
    record_cost(planned, outcome)
    metrics = evaluate(planned, outcome)
    metrics >> queue_mislabels(planned)
    review = PromotionApproval(
        task_id="approve_promotion",
        plan=planned,
        metrics=metrics,
        doc_md="""With `require_approval` on (and the gate passing), waits for **Approve / Reject** under the run's
Required Actions, showing the gate's verdict, metrics vs production, per-class scores and the confusion matrix.
Otherwise passes straight through.

**Runbook** — **waiting**: a reviewer must answer (unanswered for 3 days = rejected). **Approve**: `promote` makes
it production; `deploy_endpoint` deploys it only if that DAG is unpaused. **Reject**: `promote` records it as
rejected, nothing is deployed. The reviewer, the time and the comment are kept in `models/registry.json`.""",
    )
    promote(planned, metrics, review.output, outcome)


finetune_llava()
