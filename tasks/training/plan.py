"""What one fine-tuning run trains, where its artifacts go, and the SageMaker CreateTrainingJob request for it.

Everything here is a pure function of (settings, params, dataset, DAG run): a retry or rerun of the same run computes
the same version, job name and paths, which is what lets it find the job and files the first try made.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from tasks.common import storage
from tasks.common.settings import INCLUDE_DIR, Settings
from tasks.costs.ledger import LedgerEntry

TRAINING_SOURCE_DIR = INCLUDE_DIR / "training"
TRAINING_IMAGE_TABLE = INCLUDE_DIR / "images" / "pytorch_training.json"
ENTRY_POINT = "launch.py"  # one GPU: train.py as is; several: accelerate + DeepSpeed ZeRO-3
PRODUCTION_BASE_MODEL = "llava-hf/llava-v1.6-mistral-7b-hf"
PREDICTIONS_FILE = "eval_predictions.jsonl"  # names written by include/training/train.py
SUMMARY_FILE = "train_summary.json"
SAGEMAKER_CHANNEL_DIR = "/opt/ml/input/data"
SAGEMAKER_CHECKPOINT_DIR = "/opt/ml/checkpoints"
VOLUME_SIZE_GB = 300  # the 7B base model, the trained copy and two ZeRO-3 checkpoints with optimizer state
MAX_JOB_NAME = 63  # SageMaker's limit for training job names

# The seed's production recipe (train.py's defaults) for a 7B model on GPUs.
SAGEMAKER_HYPERPARAMETERS: dict[str, Any] = {
    "learning_rate": 2e-5,
    "num_train_epochs": 20,
    "per_device_train_batch_size": 1,
    "warmup_ratio": 0.03,
    "bf16": True,
    "gradient_checkpointing": True,
    "save_steps": 100,
}
# The tiny model on 2 CPU cores: fp32 (bf16 on CPU is >2x slower), no checkpointing of activations, a large learning
# rate and batch. On the curated digits (1,259 train / 359 test): 10 epochs 94.7%, 15 epochs 97.2% (600 steps);
# batch 16 reached 98.0% but costs twice the time per epoch; lr 2e-3 diverged to 84%.
LOCAL_HYPERPARAMETERS: dict[str, Any] = {
    "learning_rate": 1e-3,
    "num_train_epochs": 15,
    "per_device_train_batch_size": 32,
    "bf16": False,
    "gradient_checkpointing": False,
    "eval_strategy": "no",
    "save_steps": 100,
    "logging_steps": 10,
    "eval_batch_size": 64,
}


def default_hyperparameters(backend: str) -> dict[str, Any]:
    return dict(LOCAL_HYPERPARAMETERS if backend == "local" else SAGEMAKER_HYPERPARAMETERS)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")


def run_identity(run_id: str, logical_date: datetime | None, run_after: datetime) -> tuple[str, datetime]:
    """(key, time) naming a DAG run for as long as Airflow considers it the same run.

    The logical date when there is one: unique per DAG and kept when a run is cleared or recreated for the same date
    (`dags test <date>` recreates it under a new run id). Asset-triggered runs have none: their run id, then.
    """
    return (logical_date.isoformat(), logical_date) if logical_date else (run_id, run_after)


def _run_hash(dag_id: str, run_key: str, length: int) -> str:
    return hashlib.sha256(f"{dag_id}/{run_key}".encode()).hexdigest()[:length]


def training_job_name(dag_id: str, run_key: str) -> str:
    """The one SageMaker job name of a DAG run: readable prefix, plus a hash of the full run key so that long keys
    that share a prefix never collide. Valid for SageMaker (alphanumerics and hyphens, at most 63 characters)."""
    suffix = _run_hash(dag_id, run_key, 8)
    prefix = _slug(f"{dag_id}-{run_key}")[: MAX_JOB_NAME - len(suffix) - 1].rstrip("-")
    return f"{prefix}-{suffix}"


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
    taxonomy: str
    prompt: str
    base_model: str  # hub id, s3:// prefix or local directory; "" = the tiny model built from the dataset (local)
    hyperparameters: dict[str, Any]
    instance_type: str
    instance_count: int
    spot: bool
    max_run_seconds: int
    max_wait_seconds: int
    local_processes: int
    model_root: str  # <storage>/models/<version>: metrics, plots and (locally) everything else
    model_uri: str  # the trained model + processor, as a serving stack loads it
    output_uri: str  # where the script writes eval_predictions.jsonl and train_summary.json
    checkpoint_uri: str
    region: str  # of the price table: the AWS region, or "local"
    tags: dict[str, str]

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
    settings: Settings,
    params: dict[str, Any],
    dataset: dict[str, Any],
    *,
    dag_id: str,
    run_key: str,
    run_time: datetime,
) -> TrainingPlan:
    """The plan for one DAG run (`run_key`, `run_time`: see run_identity). `dataset` is {dataset_uri, taxonomy, prompt}
    from the curation report.

    Hyperparameters in `params` override the backend's defaults key by key. Artifacts: locally everything lands under
    `models/<version>/`; SageMaker writes the uncompressed model to `<S3OutputPath>/<job>/output/model/` and the
    script's other files to `.../output/data/` (OutputDataConfig.CompressionType NONE).
    """
    version = model_version(dataset["taxonomy"], dag_id, run_key, run_time)
    job_name = training_job_name(dag_id, run_key)
    model_root = f"{settings.storage_uri}/{storage.MODELS}/{version}"
    if settings.is_local:
        model_uri, output_uri = f"{model_root}/model", model_root
    else:
        model_uri, output_uri = f"{model_root}/{job_name}/output/model/", f"{model_root}/{job_name}/output/data"
    spot = bool(params["spot"])
    max_run = int(params["max_run_seconds"])
    return TrainingPlan(
        backend=settings.backend,
        version=version,
        job_name=job_name,
        dataset_uri=dataset["dataset_uri"],
        taxonomy=dataset["taxonomy"],
        prompt=dataset["prompt"],
        base_model=checked_base_model(params["base_model"], settings)
        or ("" if settings.is_local else PRODUCTION_BASE_MODEL),
        hyperparameters={**default_hyperparameters(settings.backend), **params["hyperparameters"]},
        instance_type="local" if settings.is_local else params["instance_type"],
        instance_count=1 if settings.is_local else int(params["instance_count"]),
        spot=spot and not settings.is_local,
        max_run_seconds=max_run,
        max_wait_seconds=max(int(params["max_wait_seconds"]), max_run) if spot else 0,
        local_processes=int(params["local_processes"]),
        model_root=model_root,
        model_uri=model_uri,
        output_uri=output_uri,
        checkpoint_uri=f"{model_root}/checkpoints",
        region="local" if settings.is_local else settings.region,
        tags={"pipeline": dag_id, "model_version": version, "taxonomy": dataset["taxonomy"]},
    )


def find_dataset(requested_uri: str, event_extras: list[dict[str, Any]], settings: Settings) -> dict[str, Any]:
    """The dataset to train on: the param, else the newest triggering curated_dataset event's, else the newest
    complete dataset under `<storage>/datasets/` (one with curation_report.json, which curation writes last).

    Returns {dataset_uri, taxonomy, prompt, fingerprint} from its curation report. A missing or unusable dataset
    fails without retries: waiting a minute does not make one appear.
    """
    from tasks.curation.curate import REPORT_NAME

    uri = requested_uri or next((e["dataset_uri"] for e in reversed(event_extras) if e.get("dataset_uri")), "")
    if not uri:
        root = storage.root(settings) / storage.DATASETS
        reports = [d / REPORT_NAME for d in root.iterdir() if (d / REPORT_NAME).exists()] if root.exists() else []
        if not reports:
            raise AirflowFailException(f"no curated dataset under {root}: run curate_dataset, or pass dataset_uri")
        uri = f"{settings.storage_uri}/{storage.DATASETS}/{max(reports, key=lambda r: r.stat().st_mtime).parent.name}"
    param = "dataset_uri" if requested_uri else "dataset_uri (of the curated_dataset event)"
    report = storage.read_json(storage.contained(uri, settings, param=param) / REPORT_NAME)
    if report is None:
        raise AirflowFailException(f"{uri} is not a complete curated dataset (no {REPORT_NAME}); run curate_dataset")
    if not report["splits"].get("test"):
        raise AirflowFailException(f"{uri} has no held-out test split to evaluate on; curate with test_fraction > 0")
    keys = ("taxonomy", "prompt", "fingerprint")
    return {"dataset_uri": uri, **{key: report[key] for key in keys}}


def checked_base_model(base_model: str, settings: Settings) -> str:
    """The `base_model` param: a hub id passes; a storage URI or an absolute directory must lie inside the storage
    root or an input root (tasks.common.storage.contained), or the run fails before anything is read."""
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
