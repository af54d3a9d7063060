"""Fine-tune LLaVA-NeXT on a curated dataset, evaluate it on the held-out split, promote it through a gate
(pipeline 2 of 4)."""

from __future__ import annotations

from airflow.sdk import Param, dag, task

from tasks.common.assets import CURATED_DATASET, PROMOTED_MODEL
from tasks.common.dag_defaults import SETTINGS, TAGS, default_args
from tasks.training.plan import default_hyperparameters
from tasks.training.steps import training_steps

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
            default_hyperparameters(SETTINGS.backend),
            type="object",
            description="Flags of include/training/train.py; override the backend's defaults key by key.",
        ),
        "instance_type": Param("ml.g5.48xlarge", type="string", description="SageMaker training instance."),
        "instance_count": Param(1, type="integer", minimum=1),
        "spot": Param(True, type="boolean", description="SageMaker managed spot training."),
        "max_run_seconds": Param(8 * 3600, type="integer", minimum=60),
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
        from tasks.training.plan import find_dataset, plan_training, run_identity

        events = triggering_asset_events.get(CURATED_DATASET, []) if triggering_asset_events else []
        dataset = find_dataset(params["dataset_uri"], [event.extra for event in events], SETTINGS)
        run_key, run_time = run_identity(dag_run.run_id, dag_run.logical_date, dag_run.run_after)
        return plan_training(SETTINGS, params, dataset, dag_id=dag.dag_id, run_key=run_key, run_time=run_time).to_dict()

    @task(doc_md="Writes the job's billable time × the price table into the shared cost ledger (one row per job).")
    def record_cost(plan: dict, outcome: dict, run_id=None) -> dict:
        from tasks.common import storage
        from tasks.costs import ledger
        from tasks.training.plan import TrainingOutcome, TrainingPlan, ledger_entry

        entry = ledger_entry(TrainingPlan.from_dict(plan), TrainingOutcome(**outcome), run_id)
        path = ledger.record(storage.root(SETTINGS) / storage.COSTS, entry)
        return {"cost_usd": entry.cost_usd, "ledger_row": str(path)}

    @task(doc_md="Scores the test split's answers with the strict parser; writes metrics.json and the plot.")
    def evaluate(plan: dict, outcome: dict) -> dict:
        from tasks.training.evaluation import evaluate_version
        from tasks.training.plan import TrainingOutcome, TrainingPlan

        training = TrainingPlan.from_dict(plan)
        return evaluate_version(training, TrainingOutcome(**outcome), SETTINGS.aws_conn_id)

    @task(outlets=[PROMOTED_MODEL], doc_md="Registers the version; promotes it if it passes the gate, else skips.")
    def promote(plan: dict, metrics: dict, params=None, outlet_events=None) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        from tasks.common import storage
        from tasks.training.plan import TrainingPlan
        from tasks.training.registry import register_and_gate

        training = TrainingPlan.from_dict(plan)
        models = storage.root(SETTINGS) / storage.MODELS
        decision = register_and_gate(
            models, training, metrics, min_accuracy=params["min_accuracy"], tolerance=params["tolerance"]
        )
        if not decision.promoted:
            raise AirflowSkipException(f"{training.version} not promoted: {decision.reason}")
        promoted = {"version": training.version, "model_uri": training.model_uri, "taxonomy": training.taxonomy}
        outlet_events[PROMOTED_MODEL].extra = promoted
        return {**promoted, "decision": decision.reason, "previous": decision.previous}

    planned = plan()
    outcome = training_steps(planned)
    record_cost(planned, outcome)
    promote(planned, evaluate(planned, outcome))


finetune_llava()
