"""serving → nightly, backlog and the dashboard: the endpoint that passed its smoke test, as `serving/endpoint.json`
records it."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

from tasks.model.calibration import Calibration
from tasks.model.vision_tokens import VisionGeometry
from tasks.records.base import parse, resolve, to_doc

ImageBudgetSource = Literal["as trained", "override"]


@dataclass(frozen=True)
class EndpointRecord:
    """Which endpoint to call and how to prepare its requests: the model version's taxonomy, prompt, geometry and
    image-token budget (as trained, unless the deploy overrode it: `image_budget`), its confidence calibration, and
    how its cost is priced.

    `model` is a storage reference (tasks.records.base); `url` is None on SageMaker (reached by `endpoint_name`),
    `config_name` None locally.
    """

    backend: str
    endpoint_name: str
    transport: str
    url: str | None
    model_version: str
    model: str
    taxonomy: str
    prompt: str
    instance_type: str
    instance_count: int
    price_region: str
    supports_choice: bool
    max_image_tokens: int | None
    vision_geometry: VisionGeometry
    config_name: str | None
    deployed_at: str
    image_budget: ImageBudgetSource = "as trained"
    calibration: Calibration | None = None  # the model version's (tasks.records.model)

    def model_uri(self, storage_uri: str) -> str:
        return resolve(self.model, storage_uri)

    def at(self, url: str | None, deployed_at: str) -> EndpointRecord:
        return replace(self, url=url, deployed_at=deployed_at)

    def to_dict(self) -> dict[str, Any]:
        return to_doc(self)

    @classmethod
    def from_dict(cls, doc: Any, where: str = "endpoint record") -> EndpointRecord:
        return parse(cls, doc, where, upgrade=_upgrade)


def _upgrade(doc: dict[str, Any]) -> dict[str, Any]:
    """Records written before the typed record name the model by an absolute `model_uri` (still a valid reference)."""
    if "model_uri" in doc:
        doc.setdefault("model", doc["model_uri"])
    return doc
