"""The Airflow-facing steps of `finetune_llava`: the backend seam and the task bodies the DAG wires.

`TrainingBackend` is what differs between backends — defaults, resources, where artifacts land, and the
`prepare_training` >> `train` tasks (a subprocess on a tiny model locally, a SageMaker training job waited for in the
triggerer in production). `training_backend` picks the deployment's once; everything else is shared.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Protocol
from urllib.parse import quote

from airflow.sdk import XComArg

from tasks.common import storage
from tasks.common.runs import run_identity
from tasks.common.settings import Settings
from tasks.costs import ledger
from tasks.model.vision_tokens import VisionGeometry
from tasks.records.dataset import DatasetRelease
from tasks.training.plan import (
    Resources,
    TrainingOutcome,
    TrainingPlan,
    find_dataset,
    ledger_entry,
    plan_training,
)
from tasks.training.sizing import TrainingSize

TRAINING_POOL = "sagemaker_training"  # concurrent trainings, local or SageMaker (config/airflow/pools.json)
log = logging.getLogger(__name__)


class TrainingBackend(Protocol):
    """What stands behind a training on one backend. `train` adds `prepare_training` >> `train` to the DAG and
    returns the train task's output: a TrainingOutcome dict, the same shape on both backends."""

    name: str
    geometry: VisionGeometry  # of the model it trains: curation prepares images for it
    hyperparameters: Mapping[str, Any]  # defaults of include/training/train.py's flags
    default_base_model: str
    shared_checkpoints: bool  # checkpoints per training key (plan.training_key), not per version

    def resources(self, params: dict[str, Any]) -> Resources: ...
    def size(
        self, hyperparameters: dict[str, Any], resources: Resources, dataset: DatasetRelease, params: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any] | None]: ...  # (hyperparameters, TrainingSize dict); may refuse
    def artifact_uris(self, model_root: str, job_name: str) -> tuple[str, str]: ...  # (model, other outputs)
    def train(self, plan: XComArg, pool: str) -> XComArg: ...


def training_backend(settings: Settings) -> TrainingBackend:
    def local() -> TrainingBackend:
        from tasks.training.local import LocalTraining

        return LocalTraining()

    def sagemaker() -> TrainingBackend:
        from tasks.training.sagemaker import SageMakerTraining

        return SageMakerTraining(settings)

    return settings.by_backend(local=local, sagemaker=sagemaker)


def plan(settings: Settings, params: dict[str, Any], *, dag_id: str, dag_run: Any, events: list[Any]) -> dict:
    """This run's plan: the dataset (param, else the triggering event's, else the newest) and the run's version."""
    dataset = find_dataset(params["dataset_uri"], [event.extra for event in events], settings)
    run_key, run_time = run_identity(dag_run.run_id, dag_run.logical_date, dag_run.run_after)
    training = plan_training(
        training_backend(settings), settings, params, dataset, dag_id=dag_id, run_key=run_key, run_time=run_time
    )
    if training.sizing:
        log.info("Training plan: %s", TrainingSize(**training.sizing).describe())
    log.info("Checkpoints: %s", training.checkpoint_uri)
    return training.to_dict()


def record_cost(settings: Settings, plan: dict, outcome: dict, run_id: str) -> dict:
    entry = ledger_entry(TrainingPlan.from_dict(plan), TrainingOutcome(**outcome), run_id)
    path = ledger.record(storage.root(settings) / storage.COSTS, entry)
    return {"cost_usd": entry.cost_usd, "ledger_row": str(path)}


def evaluate(settings: Settings, plan: dict, outcome: dict, run: dict[str, str] | None = None) -> dict:
    """Score the held-out split, then register the version as a candidate: its metrics and confusion matrix are
    then served (Costs & quality, which serves registered versions only) to the reviewer of approve_promotion,
    before `promote` decides anything."""
    from tasks.training.evaluation import evaluate_version
    from tasks.training.registry import candidate, register_version

    located = TrainingOutcome(**outcome)
    training = TrainingPlan.from_dict(plan).located(located)
    metrics = evaluate_version(training, located, settings.aws_conn_id)
    entry = candidate(training, metrics, storage_uri=settings.storage_uri, run=run)
    register_version(storage.root(settings) / storage.MODELS, entry)
    return metrics


def review_request(
    settings: Settings, plan: dict, metrics: dict, params: dict[str, Any], base_url: str
) -> tuple[str, str] | None:
    """What the reviewer of a promotion reads (subject, Markdown body: the gate's verdict, the held-out metrics, the
    confusion matrix served by the Costs & quality view); None when nobody needs to be asked — approval is off, or
    the gate refuses anyway."""
    from tasks.training.evaluation import METRICS_FILE
    from tasks.training.registry import check_gate, production_model

    if not params["require_approval"]:
        return None
    training = TrainingPlan.from_dict(plan)
    models = storage.root(settings) / storage.MODELS
    passes, verdict = check_gate(
        models,
        training.taxonomy,
        metrics["accuracy"],
        min_accuracy=params["min_accuracy"],
        tolerance=params["tolerance"],
    )
    if not passes:
        return None
    full = storage.read_json(models / training.version / METRICS_FILE, default={}) or {}
    current = production_model(models)
    lines = [
        f"**Promote `{training.version}` to production?** The gate says: {verdict}.",
        "",
        "| | this version | production |",
        "|---|---|---|",
        f"| version | `{training.version}` | " + (f"`{current.version}` |" if current else "none yet |"),
    ]
    for key in ("accuracy", "macro_f1", "invalid_rate"):
        theirs = current.metrics.get(key) if current else None
        ours = metrics.get(key)
        lines.append(f"| {key} | {_number(ours)} | {_number(theirs)} |")
    lines += ["", f"Held-out images: {metrics.get('n_test')} · dataset `{training.dataset_uri}`", ""]
    if full.get("per_class"):
        lines += ["| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
        lines += [
            f"| {label} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {m['support']} |"
            for label, m in full["per_class"].items()
        ]
    matrix = f"{base_url.rstrip('/')}/costs-quality/models/{quote(training.version, safe='')}/confusion_matrix.png"
    lines += [
        "",
        f"![confusion matrix of {training.version}]({matrix})",
        "",
        "**Approve**: the `promote` task makes it the registry's production version and emits the "
        "`promoted_model` asset; `deploy_endpoint` then deploys it **only if that DAG is unpaused** (check its "
        "toggle: a paused deploy_endpoint leaves the current endpoint serving the old version). **Reject**: "
        "`promote` records it as rejected; nothing is deployed. Either way your name, the time and your comment "
        "are kept in the registry (`models/registry.json`, shown in Costs & quality).",
    ]
    return f"Promote {training.version}?", "\n".join(lines)


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else "—"


def promote(
    settings: Settings,
    plan: dict,
    metrics: dict,
    params: dict[str, Any],
    review: dict,
    run: dict[str, str],
    outcome: dict | None = None,
) -> dict:
    """Register the version (with its DAG run) and promote it if it passes the gate and a reviewer did not reject
    it (`review`: approve_promotion's result, kept in the registry with its reviewer, time and comment); a refusal
    skips the task (nothing to deploy). The model URI is the one the train task located (`outcome`), not the plan's
    expectation."""
    from airflow.sdk.exceptions import AirflowSkipException

    from tasks.training.registry import record_review, register_and_gate

    training = TrainingPlan.from_dict(plan)
    if outcome:
        training = training.located(TrainingOutcome(**outcome))
    models = storage.root(settings) / storage.MODELS
    rejected = review.get("approved") is False
    if review.get("approved") is not None:
        record_review(
            models,
            training.version,
            approved=bool(review["approved"]),
            by=review.get("by"),
            at=review.get("at") or "",
            comment=review.get("comment"),
        )
    when = f" at {review['at']}" if review.get("at") else ""
    comment = f": {review['comment']}" if review.get("comment") else ""
    decision = register_and_gate(
        models,
        training,
        metrics,
        storage_uri=settings.storage_uri,
        min_accuracy=params["min_accuracy"],
        tolerance=params["tolerance"],
        run=run,
        refused=f"rejected in review by {review.get('by')}{when}{comment}" if rejected else None,
    )
    if not decision.promoted:
        raise AirflowSkipException(f"{training.version} not promoted: {decision.reason}")
    promoted = {"version": training.version, "model_uri": training.model_uri, "taxonomy": training.taxonomy}
    return {**promoted, "decision": decision.reason, "previous": decision.previous}
