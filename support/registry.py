"""What deploy and dashboard tests share: a model version registered (and promoted) as finetune_llava leaves it."""

from __future__ import annotations

from typing import Any

from airflow.sdk import ObjectStoragePath

from tasks.model.taxonomy import load_taxonomy
from tasks.model.vision_tokens import DEFAULT_MAX_IMAGE_TOKENS, TINY_GEOMETRY, VisionGeometry
from tasks.records.model import ModelVersion
from tasks.training import registry


def register(
    models_root: ObjectStoragePath,
    version: str,
    model: str,
    *,
    taxonomy: str = "digits",
    metrics: dict[str, Any] | None = None,
    geometry: VisionGeometry = TINY_GEOMETRY,
    promote: bool = True,
    **fields: Any,
) -> ModelVersion:
    """Register `version` (its model at `model`, a URI or storage reference) and, with `promote`, put it in
    production whatever its accuracy."""
    entry = ModelVersion(
        **{
            "version": version,
            "model": model,
            "taxonomy": taxonomy,
            "prompt": load_taxonomy(taxonomy).prompt(),
            "dataset": f"datasets/{taxonomy}",
            "dataset_fingerprint": "0" * 64,
            "max_image_tokens": DEFAULT_MAX_IMAGE_TOKENS,
            "vision_geometry": geometry,
            "backend": "local",
            "job_name": f"job-{version}",
            "metrics": metrics or {"accuracy": 0.9},
            **fields,
        }
    )
    registry.register_version(models_root, entry)
    if promote:
        assert registry.promote_if_better(models_root, version, min_accuracy=0.0, tolerance=1.0).promoted
    return entry
