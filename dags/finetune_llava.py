"""Fine-tune LLaVA-NeXT on a curated dataset, evaluate it on the held-out split, promote it through a gate
(pipeline 2 of 4)."""

from __future__ import annotations

from airflow.sdk import Param, dag, task

from tasks.common.assets import CURATED_DATASET, PROMOTED_MODEL
from tasks.common.dag_defaults import SETTINGS, TAGS, default_args
from tasks.training import steps
from tasks.training.plan import MAX_RUN_SECONDS

TRAINING = steps.training_backend(SETTINGS)

DOC = f"""
### Fine-tune LLaVA-NeXT (backend: `{SETTINGS.backend}`)
Runs when `curate_dataset` emits **curated_dataset**, or by hand with params. TRL SFT through
`include/training/launch.py` (DeepSpeed ZeRO-3 on several GPUs): a **SageMaker training job** on the `sagemaker`
backend, the **same script as a subprocess** on an offline tiny LLaVA-NeXT on the `local` backend.

`plan` → `prepare_training` → `train` → `record_cost` + `evaluate` → `promote`

**Where things land** (`models/<version>/`, version = `<taxonomy>-<run time>-<run hash>`): `metrics.json`,
`confusion_matrix.png`, `eval_predictions.jsonl`; the model in `model/` locally, in `<job>/output/model/`
(uncompressed) on SageMaker. `models/registry.json` lists versions; `production` is what gets deployed.

**Runbook**
- *plan: no curated dataset*: run `curate_dataset`, or pass `dataset_uri`.
- *train failed*: see the task's runbook. The job name comes from the run's logical date (asset-triggered runs:
  the run id), so clearing or rerunning reattaches to its job; to train again after a Failed/Stopped job, trigger a
  run with another logical date.
- *evaluate: no eval_predictions.jsonl*: the script did not finish; the train log says why.
- *promote skipped*: the gate said no (reason in the log and in `registry.json`). Nothing is deployed.
- Cost: one ledger row per job (`costs/ledger/kind=training/`), shared with nightly classification.
"""


@dag(
    dag_id="finetune_llava",
    schedule=[CURATED_DATASET],
    catchup=False,
    max_active_runs=1,  # one writer of registry.json at a time
    tags=[*TAGS, "training"],
    doc_md=DOC,
    default_args=default_args(),
    params={
        "dataset_uri": Param("", type="string", description="Empty: the triggering event's, else the newest."),
        "base_model": Param("", type="string", description="Hub id, s3:// prefix or directory; empty: default."),
        "hyperparameters": Param(
            dict(TRAINING.hyperparameters),
            type="object",
            description="Flags of include/training/train.py; override the backend's defaults key by key.",
        ),
        "instance_type": Param("ml.g5.48xlarge", type="string", description="SageMaker training instance."),
        "instance_count": Param(1, type="integer", minimum=1),
        "spot": Param(True, type="boolean", description="SageMaker managed spot training."),
        "max_run_seconds": Param(
            8 * 3600, type="integer", minimum=60, maximum=MAX_RUN_SECONDS, description="At most 28 days (AWS limit)."
        ),
        "max_wait_seconds": Param(16 * 3600, type="integer", minimum=60, description="Spot: wait + run."),
        "local_processes": Param(
            1, type="integer", minimum=1, description="Local: >= 2 runs ZeRO-3 on CPU (measured 2x slower per step)."
        ),
        "min_accuracy": Param(0.9, type="number", minimum=0, maximum=1),
        "tolerance": Param(0.01, type="number", minimum=0, maximum=1, description="Allowed drop vs production."),
    },
)
def finetune_llava():
    @task(doc_md="Resolves the dataset and fixes this run's version, job name and paths (see the DAG runbook).")
    def plan(params=None, dag=None, dag_run=None, triggering_asset_events=None) -> dict:
        events = triggering_asset_events.get(CURATED_DATASET, []) if triggering_asset_events else []
        return steps.plan(SETTINGS, params, dag_id=dag.dag_id, dag_run=dag_run, events=events)

    @task(doc_md="Writes the job's billable time × the price table into the shared cost ledger (one row per job).")
    def record_cost(plan: dict, outcome: dict, run_id=None) -> dict:
        return steps.record_cost(SETTINGS, plan, outcome, run_id)

    @task(doc_md="Scores the test split's answers with the strict parser; writes metrics.json and the plot.")
    def evaluate(plan: dict, outcome: dict) -> dict:
        return steps.evaluate(SETTINGS, plan, outcome)

    @task(outlets=[PROMOTED_MODEL], doc_md="Registers the version; promotes it if it passes the gate, else skips.")
    def promote(plan: dict, metrics: dict, params=None, outlet_events=None) -> dict:
        promoted = steps.promote(SETTINGS, plan, metrics, params)
        outlet_events[PROMOTED_MODEL].extra = {key: promoted[key] for key in ("version", "model_uri", "taxonomy")}
        return promoted

    planned = plan()
    outcome = TRAINING.train(planned, pool=steps.TRAINING_POOL)
    record_cost(planned, outcome)
    promote(planned, evaluate(planned, outcome))


finetune_llava()
