"""The model registry: one JSON index at `<storage>/models/registry.json` of every evaluated version and which one
is in production.

Promotion is a gate, not a vote: a version goes to production only if its held-out accuracy reaches a minimum and
is not worse than the production model's by more than a tolerance. Deploy pipelines read `production_model`.
Writers are serialised by the fine-tuning DAG (max_active_runs=1); the index is replaced atomically.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from airflow.sdk import ObjectStoragePath

from tasks.common import storage
from tasks.training.plan import TrainingPlan

REGISTRY_FILE = "registry.json"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def read_registry(models_root: ObjectStoragePath) -> dict[str, Any]:
    """The whole index; an empty one before the first registration."""
    return storage.read_json(models_root / REGISTRY_FILE, default=None) or {
        "production": None,
        "versions": {},
        "history": [],
    }


def register_version(models_root: ObjectStoragePath, version: str, entry: dict[str, Any]) -> dict[str, Any]:
    """Add or refresh a version as a candidate; registering again keeps its first `created_at` and its status.

    `entry` carries at least model_uri, taxonomy, prompt and metrics (with `accuracy`).
    """
    registry = read_registry(models_root)
    previous = registry["versions"].get(version, {})
    registry["versions"][version] = {
        "status": "candidate",
        **{k: v for k, v in previous.items() if k in ("status", "decision", "created_at")},
        **entry,
        "created_at": previous.get("created_at", _now()),
    }
    storage.write_json(models_root / REGISTRY_FILE, registry)
    return registry["versions"][version]


def production_model(models_root: ObjectStoragePath) -> dict[str, Any] | None:
    """The production version's entry plus `version` and `accuracy`, or None before the first promotion."""
    registry = read_registry(models_root)
    version = registry["production"]
    if version is None:
        return None
    entry = registry["versions"][version]
    return {**entry, "version": version, "accuracy": entry["metrics"]["accuracy"]}


@dataclass(frozen=True)
class Decision:
    promoted: bool
    reason: str
    previous: str | None  # the production version before this decision


def gate(
    accuracy: float, production: dict[str, Any] | None, *, min_accuracy: float, tolerance: float
) -> tuple[bool, str]:
    """The promotion rule alone: (passes, why). `production` is None when there is nothing comparable."""
    if accuracy < min_accuracy:
        return False, f"accuracy {accuracy:.4f} is below the minimum {min_accuracy:.4f}"
    if production and accuracy < production["accuracy"] - tolerance:
        return False, (
            f"accuracy {accuracy:.4f} is worse than production {production['version']} "
            f"({production['accuracy']:.4f}) by more than the tolerance {tolerance:.4f}"
        )
    return True, f"accuracy {accuracy:.4f} passes the gate (minimum {min_accuracy:.4f}, tolerance {tolerance:.4f})"


def check_gate(
    models_root: ObjectStoragePath, taxonomy: str, accuracy: float, *, min_accuracy: float, tolerance: float
) -> tuple[bool, str]:
    """The gate against the current production model (what promote_if_better decides), without writing anything:
    what a reviewer is told before approving. Another taxonomy's production model sets no bar beyond the minimum."""
    current = production_model(models_root)
    comparable = current if current and current["taxonomy"] == taxonomy else None
    return gate(accuracy, comparable, min_accuracy=min_accuracy, tolerance=tolerance)


def refuse(models_root: ObjectStoragePath, version: str, reason: str) -> Decision:
    """Record that a registered version is not promoted for a reason outside the gate (a reviewer's rejection)."""
    registry = read_registry(models_root)
    registry["versions"][version] |= {"status": "rejected", "decision": reason}
    storage.write_json(models_root / REGISTRY_FILE, registry)
    return Decision(False, reason, registry["production"])


def promote_if_better(
    models_root: ObjectStoragePath, version: str, *, min_accuracy: float, tolerance: float
) -> Decision:
    """Promote a registered version if it passes the gate (check_gate); idempotent (the production version stays
    promoted)."""
    registry = read_registry(models_root)
    entry, previous = registry["versions"][version], registry["production"]
    if previous == version:
        return Decision(True, f"{version} is already in production", previous)
    promoted, reason = check_gate(
        models_root, entry["taxonomy"], entry["metrics"]["accuracy"], min_accuracy=min_accuracy, tolerance=tolerance
    )
    entry["decision"] = reason
    if promoted:
        if previous:
            registry["versions"][previous]["status"] = "retired"
        entry["status"] = "production"
        registry["production"] = version
        registry["history"].append({"version": version, "previous": previous, "promoted_at": _now()})
    else:
        entry["status"] = "rejected"
    storage.write_json(models_root / REGISTRY_FILE, registry)
    return Decision(promoted, reason, previous)


def register_and_gate(
    models_root: ObjectStoragePath,
    plan: TrainingPlan,
    metrics: dict[str, Any],
    *,
    min_accuracy: float,
    tolerance: float,
    run: dict[str, str] | None = None,
    refused: str | None = None,
) -> Decision:
    """Register an evaluated training run's version (with the DAG run that made it: `run` = {dag_id, run_id}), then
    put it through the promotion gate — unless `refused` already says why it must not be promoted."""
    entry = {
        "model_uri": plan.model_uri,
        "taxonomy": plan.taxonomy,
        "prompt": plan.prompt,
        "dataset_uri": plan.dataset_uri,
        "backend": plan.backend,
        "job_name": plan.job_name,
        "vision_geometry": plan.vision_geometry,
        "metrics": metrics,
        **(run or {}),
    }
    register_version(models_root, plan.version, entry)
    if refused:
        return refuse(models_root, plan.version, refused)
    return promote_if_better(models_root, plan.version, min_accuracy=min_accuracy, tolerance=tolerance)
