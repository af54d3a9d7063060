"""training → registry → serving: one evaluated model version, as `models/registry.json` lists it."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from tasks.model.calibration import Calibration
from tasks.model.vision_tokens import DEFAULT_MAX_IMAGE_TOKENS, VisionGeometry
from tasks.records.base import parse, resolve, to_doc
from tasks.records.reviews import FoldedReviews


@dataclass(frozen=True)
class ModelVersion:
    """What serving needs to serve a trained model as it was trained, and what ties it to its data.

    `model` and `dataset` are storage references (tasks.records.base.storage_ref): relative to the storage root when
    inside it. `max_image_tokens` is the budget its dataset's images were prepared with, so serving resizes the same.
    `calibration` turns served log-probabilities into calibrated confidence (None: evaluated without decision-token
    scores, so its predictions carry no confidence). `reviews` names the reviewed labels its dataset was curated with
    (the review snapshot, and how many labels it changed or added; None: none).
    """

    version: str
    model: str
    taxonomy: str
    prompt: str
    dataset: str
    dataset_fingerprint: str | None  # None: registered before the fingerprint was kept
    max_image_tokens: int | None  # None: trained on images without a budget
    vision_geometry: VisionGeometry
    backend: str
    job_name: str
    metrics: dict[str, Any]
    status: str = "candidate"  # candidate | production | retired | rejected
    decision: str | None = None  # why the promotion gate (or a reviewer) decided as it did
    created_at: str | None = None
    dag_id: str | None = None  # the DAG run that trained it
    run_id: str | None = None
    calibration: Calibration | None = None
    reviews: FoldedReviews | None = None

    @property
    def accuracy(self) -> float:
        return float(self.metrics["accuracy"])

    def model_uri(self, storage_uri: str) -> str:
        return resolve(self.model, storage_uri)

    def dataset_uri(self, storage_uri: str) -> str:
        return resolve(self.dataset, storage_uri)

    def with_status(self, status: str, decision: str | None = None) -> ModelVersion:
        return replace(self, status=status, decision=decision if decision is not None else self.decision)

    def to_dict(self) -> dict[str, Any]:
        """The registry entry (the registry keys entries by version; the field is kept inside too)."""
        return to_doc(self)

    @classmethod
    def from_dict(cls, version: str, doc: Any, where: str) -> ModelVersion:
        return parse(cls, doc, f"{where}: version {version!r}", upgrade=lambda d: _upgrade(version, d))


def _upgrade(version: str, doc: dict[str, Any]) -> dict[str, Any]:
    """Entries written before the typed record: absolute `model_uri`/`dataset_uri` (still valid references) and no
    budget or fingerprint. Their deploys served with deploy_endpoint's default budget, the curation default too."""
    doc.setdefault("version", version)
    if "model_uri" in doc:
        doc.setdefault("model", doc["model_uri"])
    if "dataset_uri" in doc:
        doc.setdefault("dataset", doc["dataset_uri"])
    doc.setdefault("dataset_fingerprint", None)
    doc.setdefault("max_image_tokens", DEFAULT_MAX_IMAGE_TOKENS)
    return doc
