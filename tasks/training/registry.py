"""The model registry: one JSON index at `<storage>/models/registry.json` of every evaluated version and which one
is in production.

Promotion is a gate, not a vote: a version goes to production only if its held-out accuracy reaches a minimum and
is not worse than the production model's by more than a tolerance. Deploy pipelines read `production_model`.
Writers are serialised by the fine-tuning DAG (max_active_runs=1); the index is replaced atomically.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from airflow.sdk import ObjectStoragePath

from tasks.common import storage
from tasks.model.vision_tokens import VisionGeometry
from tasks.records.base import storage_ref
from tasks.records.model import ModelVersion
from tasks.records.reviews import FoldedReviews
from tasks.training.calibration import calibration_of
from tasks.training.plan import TrainingPlan

REGISTRY_FILE = "registry.json"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def read_registry(models_root: ObjectStoragePath) -> dict[str, Any]:
    """The whole index as stored; an empty one before the first registration."""
    return storage.read_json(models_root / REGISTRY_FILE, default=None) or {
        "production": None,
        "versions": {},
        "history": [],
    }


def versions(models_root: ObjectStoragePath) -> dict[str, ModelVersion]:
    """Every registered version, read and checked (a malformed entry fails naming the file and the field)."""
    where = str(models_root / REGISTRY_FILE)
    return {v: ModelVersion.from_dict(v, doc, where) for v, doc in read_registry(models_root)["versions"].items()}


def register_version(models_root: ObjectStoragePath, version: ModelVersion) -> ModelVersion:
    """Add or refresh a version as a candidate; registering again keeps its first `created_at`, its status and
    decision."""
    registry = read_registry(models_root)
    before = versions(models_root).get(version.version)
    kept = before or replace(version, status="candidate", created_at=_now())
    entry = replace(version, status=kept.status, decision=kept.decision, created_at=kept.created_at)
    registry["versions"][version.version] = entry.to_dict()
    storage.write_json(models_root / REGISTRY_FILE, registry)
    return entry


def production_model(models_root: ObjectStoragePath) -> ModelVersion | None:
    """The production version, or None before the first promotion."""
    version = read_registry(models_root)["production"]
    return None if version is None else versions(models_root)[version]


@dataclass(frozen=True)
class Decision:
    promoted: bool
    reason: str
    previous: str | None  # the production version before this decision


def gate(
    accuracy: float, production: ModelVersion | None, *, min_accuracy: float, tolerance: float
) -> tuple[bool, str]:
    """The promotion rule alone: (passes, why). `production` is None when there is nothing comparable."""
    if accuracy < min_accuracy:
        return False, f"accuracy {accuracy:.4f} is below the minimum {min_accuracy:.4f}"
    if production and accuracy < production.accuracy - tolerance:
        return False, (
            f"accuracy {accuracy:.4f} is worse than production {production.version} "
            f"({production.accuracy:.4f}) by more than the tolerance {tolerance:.4f}"
        )
    return True, f"accuracy {accuracy:.4f} passes the gate (minimum {min_accuracy:.4f}, tolerance {tolerance:.4f})"


def check_gate(
    models_root: ObjectStoragePath, taxonomy: str, accuracy: float, *, min_accuracy: float, tolerance: float
) -> tuple[bool, str]:
    """The gate against the current production model (what `promote` decides), without writing anything:
    what a reviewer is told before approving. Another taxonomy's production model sets no bar beyond the minimum."""
    current = production_model(models_root)
    comparable = current if current and current.taxonomy == taxonomy else None
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
    candidate = versions(models_root)[version]
    promoted, reason = check_gate(
        models_root, candidate.taxonomy, candidate.accuracy, min_accuracy=min_accuracy, tolerance=tolerance
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
    storage_uri: str,
    min_accuracy: float,
    tolerance: float,
    run: dict[str, str] | None = None,
    refused: str | None = None,
) -> Decision:
    """Register an evaluated training run's version (with the DAG run that made it: `run` = {dag_id, run_id}), then
    put it through the promotion gate — unless `refused` already says why it must not be promoted. What lies under
    `storage_uri` is recorded relative to it (tasks.records.base.storage_ref)."""
    register_version(models_root, candidate(plan, metrics, storage_uri=storage_uri, run=run))
    if refused:
        return refuse(models_root, plan.version, refused)
    return promote_if_better(models_root, plan.version, min_accuracy=min_accuracy, tolerance=tolerance)


def candidate(
    plan: TrainingPlan, metrics: dict[str, Any], *, storage_uri: str, run: dict[str, str] | None = None
) -> ModelVersion:
    """The registry entry of an evaluated training run's version, with the DAG run that made it (`run` = {dag_id,
    run_id}): what `evaluate` registers as a candidate before anyone reviews it, and `promote` registers again."""
    return ModelVersion(
        version=plan.version,
        model=storage_ref(plan.model_uri, storage_uri),
        taxonomy=plan.taxonomy,
        prompt=plan.prompt,
        dataset=storage_ref(plan.dataset_uri, storage_uri),
        dataset_fingerprint=plan.dataset_fingerprint,
        max_image_tokens=plan.max_image_tokens,
        vision_geometry=VisionGeometry.from_dict(plan.vision_geometry),
        backend=plan.backend,
        job_name=plan.job_name,
        metrics=metrics,
        dag_id=(run or {}).get("dag_id"),
        run_id=(run or {}).get("run_id"),
        calibration=calibration_of(metrics["calibration"]) if metrics.get("calibration") else None,
        reviews=FoldedReviews.from_dict(plan.reviews) if plan.reviews else None,
    )


def record_review(
    models_root: ObjectStoragePath, version: str, *, approved: bool, by: str | None, at: str, comment: str | None
) -> dict[str, Any]:
    """Keep who approved or rejected a version in review, when, and their comment (like a model registry's
    approval status: the trail stays with the version, not only in a task log). The newest review counts."""
    registry = read_registry(models_root)
    review = {
        "version": version,
        "decision": "approved" if approved else "rejected",
        "by": by or "unknown",
        "at": at,
        "comment": comment or "",
    }
    registry.setdefault("reviews", []).append(review)
    storage.write_json(models_root / REGISTRY_FILE, registry)
    return review


def reviews(models_root: ObjectStoragePath) -> dict[str, dict[str, Any]]:
    """The newest review of each reviewed version."""
    return {review["version"]: review for review in read_registry(models_root).get("reviews", [])}
