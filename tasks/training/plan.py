"""What one fine-tuning run trains and where its artifacts go, the same on both backends.

Everything here is a pure function of (backend, settings, params, dataset, DAG run): a retry or rerun of the same run
computes the same version, job name and paths, which is what lets it find the job and files the first try made. What
differs per backend (defaults, resources, artifact layout) comes from the backend (tasks.training.steps).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowFailException

from tasks.common import storage
from tasks.common.aws_names import sagemaker_name, slug
from tasks.common.settings import INCLUDE_DIR, Settings
from tasks.costs.ledger import LedgerEntry
from tasks.records.base import RecordError, resolve, storage_ref
from tasks.records.dataset import DatasetRelease

if TYPE_CHECKING:
    from tasks.training.steps import TrainingBackend

TRAINING_SOURCE_DIR = INCLUDE_DIR / "training"
ENTRY_POINT = "launch.py"  # one GPU: train.py as is; several: accelerate + DeepSpeed ZeRO-3
PREDICTIONS_FILE = "eval_predictions.jsonl"  # names written by include/training/train.py (a test keeps them equal)
SUMMARY_FILE = "train_summary.json"
# CreateTrainingJob's StoppingCondition.MaxRuntimeInSeconds limit (28 days); a larger value is refused by the API
# only after the job was planned and its source uploaded.
MAX_RUN_SECONDS = 28 * 24 * 3600
CHECKPOINTS = "checkpoints"  # models/checkpoints/<training key>/ on SageMaker: shared by reruns of one training
EVALUATION_DIR = "evaluation"  # train.py's subfolder of the model dir on SageMaker (a test keeps them equal)
# Flags that change neither what is trained nor the shape of its checkpoints: left out of the training key, so a
# rerun with another checkpoint interval, log cadence or generation batch still resumes.
NOT_IN_TRAINING_KEY = frozenset(
    {"save_steps", "save_total_limit", "logging_steps", "eval_batch_size", "max_new_tokens", "label_column"}
)


@dataclass(frozen=True)
class Resources:
    """What a training runs on, and how its cost is priced (`price_region`: a region of the price table)."""

    instance_type: str
    instance_count: int
    spot: bool
    max_wait_seconds: int  # 0 without spot
    price_region: str


def _run_hash(dag_id: str, run_key: str, length: int) -> str:
    return hashlib.sha256(f"{dag_id}/{run_key}".encode()).hexdigest()[:length]


def training_job_name(dag_id: str, run_key: str) -> str:
    """The one SageMaker job name of a DAG run: readable prefix, plus a hash of the full run key so that long keys
    that share a prefix never collide. Valid for SageMaker (alphanumerics and hyphens, at most 63 characters)."""
    return sagemaker_name(slug(f"{dag_id}-{run_key}"), _run_hash(dag_id, run_key, 8))


def model_version(taxonomy: str, dag_id: str, run_key: str, run_time: datetime) -> str:
    """`<taxonomy>-<run time>-<run hash>`: sorts by time, unique per run."""
    return f"{taxonomy}-{run_time:%Y%m%dT%H%M%S}-{_run_hash(dag_id, run_key, 6)}"


@dataclass(frozen=True)
class TrainingPlan:
    """One run's training, passed between tasks as a dict (XCom)."""

    backend: str
    version: str
    job_name: str
    dataset_uri: str
    dataset_fingerprint: str  # the curation report's: which examples, prompt and preparation, exactly
    taxonomy: str
    prompt: str
    max_image_tokens: int | None  # the budget the dataset's images were prepared with; serving resizes the same
    base_model: str  # hub id, s3:// prefix or local directory; "" = the backend builds one (local: the tiny model)
    hyperparameters: dict[str, Any]
    instance_type: str
    instance_count: int
    spot: bool
    max_run_seconds: int
    max_wait_seconds: int
    local_processes: int
    model_root: str  # <storage>/models/<version>: metrics, plots, and what the backend keeps there
    model_uri: str  # the trained model + processor, as a serving stack loads it
    output_uri: str  # where the script writes eval_predictions.jsonl and train_summary.json
    checkpoint_uri: str  # local: per version; SageMaker: per training key (training_key), so a rerun resumes
    region: str  # of the price table
    tags: dict[str, str]
    vision_geometry: dict[str, Any]  # of the model trained: how images must be prepared for it (VisionGeometry)
    sizing: dict[str, Any] | None = None  # tasks.training.sizing.TrainingSize of a sized (SageMaker) plan
    reviews: dict[str, Any] | None = None  # the dataset's FoldedReviews: the reviewed labels it was curated with

    def located(self, outcome: TrainingOutcome) -> TrainingPlan:
        """This plan with the model and output URIs where the finished training really put them (the outcome's,
        from DescribeTrainingJob on SageMaker); unchanged where the outcome does not say."""
        return replace(
            self, model_uri=outcome.model_uri or self.model_uri, output_uri=outcome.output_uri or self.output_uri
        )

    @property
    def predictions_uri(self) -> str:
        return f"{self.output_uri}/{PREDICTIONS_FILE}"

    @property
    def summary_uri(self) -> str:
        return f"{self.output_uri}/{SUMMARY_FILE}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> TrainingPlan:
        return cls(**doc)


def plan_training(
    backend: TrainingBackend,
    settings: Settings,
    params: dict[str, Any],
    dataset: DatasetRelease,
    *,
    dag_id: str,
    run_key: str,
    run_time: datetime,
) -> TrainingPlan:
    """The plan for one DAG run (`run_key`, `run_time`: see run_identity) on a curated dataset (find_dataset).

    Hyperparameters in `params` override the backend's defaults key by key; where the model and the script's other
    files land is the backend's `artifact_uris`.
    """
    if not 0 < int(params["max_run_seconds"]) <= MAX_RUN_SECONDS:
        raise ValueError(f"max_run_seconds must lie in 1..{MAX_RUN_SECONDS} (28 days, the SageMaker limit)")
    if dataset.vision_tile_size != backend.geometry.tile_size:
        raise ValueError(
            f"{dataset.dataset} was curated for {dataset.vision_tile_size}-px tiles, the {backend.name} model has "
            f"{backend.geometry.tile_size}-px tiles: curate it again on this backend"
        )
    version = model_version(dataset.taxonomy, dag_id, run_key, run_time)
    job_name = training_job_name(dag_id, run_key)
    model_root = f"{settings.storage_uri}/{storage.MODELS}/{version}"
    dataset_uri = resolve(dataset.dataset, settings.storage_uri)
    model_uri, output_uri = backend.artifact_uris(model_root, job_name)
    resources = backend.resources(params)
    base_model = checked_base_model(params["base_model"], settings) or backend.default_base_model
    hyperparameters = {**backend.hyperparameters, **params["hyperparameters"]}
    sizing = None
    if dataset.splits:  # every curated dataset (find_dataset); preflight's example plan has none
        hyperparameters, sizing = backend.size(hyperparameters, resources, dataset, params)
    if backend.shared_checkpoints:
        key = training_key(dataset_uri, dataset, base_model, hyperparameters, resources)
        checkpoint_uri = f"{settings.storage_uri}/{storage.MODELS}/{CHECKPOINTS}/{key}"
    else:
        checkpoint_uri = f"{model_root}/checkpoints"
    return TrainingPlan(
        backend=backend.name,
        version=version,
        job_name=job_name,
        dataset_uri=dataset_uri,
        dataset_fingerprint=dataset.fingerprint,
        taxonomy=dataset.taxonomy,
        prompt=dataset.prompt,
        max_image_tokens=dataset.max_image_tokens,
        base_model=base_model,
        hyperparameters=hyperparameters,
        instance_type=resources.instance_type,
        instance_count=resources.instance_count,
        spot=resources.spot,
        max_run_seconds=int(params["max_run_seconds"]),
        max_wait_seconds=resources.max_wait_seconds,
        local_processes=int(params["local_processes"]),
        model_root=model_root,
        model_uri=model_uri,
        output_uri=output_uri,
        checkpoint_uri=checkpoint_uri,
        region=resources.price_region,
        tags={"pipeline": dag_id, "model_version": version, "taxonomy": dataset.taxonomy},
        vision_geometry=backend.geometry.to_dict(),
        sizing=sizing,
        reviews=dataset.reviews.to_dict() if dataset.reviews else None,
    )


def training_key(
    dataset_uri: str, dataset: DatasetRelease, base_model: str, hyperparameters: dict[str, Any], resources: Resources
) -> str:
    """`<taxonomy>-<hash>` of what a training's checkpoints depend on: the dataset (URI and fingerprint), the base
    model, the hyperparameters that shape the run (not NOT_IN_TRAINING_KEY), and the instance type and count
    (DeepSpeed's ZeRO-3 checkpoint is sharded per rank, so another world size cannot load it). Two runs with the same
    key train the same thing: the second resumes the first's newest checkpoint (train.py), e.g. after a Stopped job.
    """
    shaping = {key: flag_value(value) for key, value in hyperparameters.items() if key not in NOT_IN_TRAINING_KEY}
    identity = {
        "dataset_uri": dataset_uri,
        "fingerprint": dataset.fingerprint,
        "base_model": base_model,
        "hyperparameters": shaping,
        "instance_type": resources.instance_type,
        "instance_count": resources.instance_count,
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return f"{slug(dataset.taxonomy)}-{digest}"


def find_dataset(requested_uri: str | None, event_extras: list[dict[str, Any]], settings: Settings) -> DatasetRelease:
    """The dataset to train on: the param, else the newest triggering curated_dataset event's, else the newest
    complete dataset under `<storage>/datasets/` (one with curation_report.json, which curation writes last), as
    its curation report declares it. A missing or unusable dataset fails without retries: waiting a minute does not
    make one appear.
    """
    from tasks.common.storage import CURATION_REPORT as REPORT_NAME

    uri = requested_uri or next((e["dataset_uri"] for e in reversed(event_extras) if e.get("dataset_uri")), "")
    if not uri:
        root = storage.root(settings) / storage.DATASETS
        reports = [d / REPORT_NAME for d in root.iterdir() if (d / REPORT_NAME).exists()] if root.exists() else []
        if not reports:
            raise AirflowFailException(f"no curated dataset under {root}: run curate_dataset, or pass dataset_uri")
        uri = f"{settings.storage_uri}/{storage.DATASETS}/{max(reports, key=lambda r: r.stat().st_mtime).parent.name}"
    param = "dataset_uri" if requested_uri else "dataset_uri (of the curated_dataset event)"
    report_path = storage.contained(uri, settings, param=param) / REPORT_NAME
    report = storage.read_json(report_path)
    if report is None:
        raise AirflowFailException(f"{uri} is not a complete curated dataset (no {REPORT_NAME}); run curate_dataset")
    try:
        release = DatasetRelease.from_report(report, storage_ref(uri, settings.storage_uri), str(report_path))
    except RecordError as exc:
        raise AirflowFailException(f"{exc}: curate the dataset again") from None
    if not release.splits.get("test"):
        raise AirflowFailException(f"{uri} has no held-out test split to evaluate on; curate with test_fraction > 0")
    return release


def checked_base_model(base_model: str | None, settings: Settings) -> str:
    """The `base_model` param: a hub id passes; a storage URI or an absolute directory must lie inside the storage
    root or an input root (tasks.common.storage.contained), or the run fails before anything is read."""
    if not base_model:
        return ""
    if "://" in base_model or base_model.startswith("/"):
        uri = base_model if "://" in base_model else f"file://{base_model}"
        storage.contained(uri, settings, param="base_model")
    return base_model


def flag_value(value: Any) -> str:
    """train.py reads every flag as a string (SageMaker passes hyperparameters as strings): booleans as true/false."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def script_flags(hyperparameters: dict[str, Any]) -> list[str]:
    return [part for key, value in hyperparameters.items() for part in (f"--{key}", flag_value(value))]


@dataclass(frozen=True)
class TrainingOutcome:
    """A finished training, the same shape on both backends: what the cost ledger and the metrics need."""

    job_name: str
    region: str
    instance_type: str
    instance_count: int
    spot: bool
    billable_seconds: float  # per instance
    price_per_hour_usd: float
    train_seconds: float
    model_uri: str = ""  # where the model really is (SageMaker: DescribeTrainingJob's ModelArtifacts)
    output_uri: str = ""  # where eval_predictions.jsonl and train_summary.json really are

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def ledger_entry(plan: TrainingPlan, outcome: TrainingOutcome, run_id: str) -> LedgerEntry:
    """The cost ledger row of a training job (kind "training", keyed by job name: recording again replaces it)."""
    return LedgerEntry(
        kind="training",
        key=outcome.job_name,
        backend=plan.backend,
        region=outcome.region,
        instance_type=outcome.instance_type,
        instance_count=outcome.instance_count,
        billable_seconds=outcome.billable_seconds,
        price_per_hour_usd=outcome.price_per_hour_usd,
        model_version=plan.version,
        spot=outcome.spot,
        run_id=run_id,
    )
