"""What a deployment is on either backend: the plan, the smoke test, and the endpoint record.

The record at `<storage>/serving/endpoint.json` (tasks.records.endpoint.EndpointRecord) is the contract with the
classification DAGs: which endpoint to call, with which taxonomy, prompt and image budget. Deploy writes it only
after the endpoint passed its smoke test; teardown removes it. Readers go through `current_endpoint`.
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import UTC, datetime
from typing import Any

from airflow.sdk import ObjectStoragePath
from airflow.sdk.exceptions import AirflowFailException

from tasks.common import storage
from tasks.common.aws_names import ENDPOINT_PREFIX, check_sagemaker_name
from tasks.common.settings import Settings
from tasks.model.calibration import Calibration
from tasks.model.taxonomy import Taxonomy
from tasks.model.vision_tokens import ResizePolicy
from tasks.records.endpoint import EndpointRecord
from tasks.records.model import ModelVersion
from tasks.serving.client import EndpointClient, EndpointSpec

log = logging.getLogger(__name__)

RECORD_NAME = storage.ENDPOINT_RECORD
DEFAULT_ENDPOINT_NAME = "llava-classifier"
DEFAULT_INSTANCE_TYPE = "ml.g5.xlarge"  # deploy_endpoint's default on SageMaker
SMOKE_DIGIT_INDEX = 0  # a fixed, known image: the answer must parse as a label (right or not, it is logged)


class SmokeTestFailed(AirflowFailException):
    """The endpoint answered, but not with a taxonomy label: it must not take traffic. Failing without a retry
    (the same model gives the same answer) sends the run straight to the rollback."""


def serving_root(settings: Settings) -> ObjectStoragePath:
    return storage.root(settings) / storage.SERVING


def base_plan(settings: Settings, params: dict[str, Any]) -> dict[str, Any]:
    """The backend-neutral part of a deployment plan: which model version, under which name, with which budget.

    `params["model_version"]` empty means the registry's production model (what a promotion just published).
    `params["max_image_tokens"]` empty means the budget the model was trained with; a value overrides it, and the
    record and the log say so.
    """
    name = check_sagemaker_name(params["endpoint_name"], "endpoint name")
    if not name.startswith(ENDPOINT_PREFIX):
        raise ValueError(f"endpoint name {name!r} must start with {ENDPOINT_PREFIX!r}: the IAM policy scope")
    release = _release(storage.root(settings) / storage.MODELS, params["model_version"])
    budget, source = release.max_image_tokens, "as trained"
    if params["max_image_tokens"] is not None and params["max_image_tokens"] != release.max_image_tokens:
        budget, source = params["max_image_tokens"], "override"
        log.warning(
            "max_image_tokens=%s overrides the %s image tokens %s was trained with: images are resized differently "
            "from its training data",
            budget,
            release.max_image_tokens,
            release.version,
        )
    else:
        log.info("image-token budget: %s, as %s was trained", budget, release.version)
    return {
        "backend": settings.backend,
        "endpoint_name": name,
        "model_version": release.version,
        "model": release.model,
        "model_uri": release.model_uri(settings.storage_uri),
        "taxonomy": release.taxonomy,
        "prompt": release.prompt,
        "vision_geometry": release.vision_geometry.to_dict(),
        "max_image_tokens": budget,
        "image_budget": source,
        "calibration": release.calibration.to_dict() if release.calibration else None,
        "smoke_image_uri": params["smoke_image_uri"],
    }


def _release(models_root: ObjectStoragePath, version: str | None) -> ModelVersion:
    """The registry's production version; a named version must be that one (the registry exposes no other
    lookup)."""
    from tasks.training import registry

    release = registry.production_model(models_root)
    if release is None:
        raise LookupError(f"no promoted model in {models_root}/registry.json: run finetune_llava first")
    if version and release.version != version:
        raise LookupError(f"model version {version!r} is not the promoted one ({release.version!r})")
    return release


def endpoint_record(plan: dict[str, Any], url: str | None) -> EndpointRecord:
    """The record for a plan whose endpoint is up at `url` (local) or under its endpoint name (SageMaker)."""
    fields = {spec.name: plan.get(spec.name) for spec in dataclasses.fields(EndpointRecord)}
    deployed_at = datetime.now(UTC).isoformat(timespec="seconds")
    return EndpointRecord.from_dict(fields | {"url": url, "deployed_at": deployed_at}, "the deploy plan")


def publish_record(root: ObjectStoragePath, record: EndpointRecord) -> ObjectStoragePath:
    path = root / RECORD_NAME
    storage.write_json(path, record.to_dict())
    return path


def current_endpoint(root: ObjectStoragePath) -> EndpointRecord | None:
    """The endpoint that passed its smoke test last and has not been torn down, or None."""
    doc = storage.read_json(root / RECORD_NAME)
    return None if doc is None else EndpointRecord.from_dict(doc, str(root / RECORD_NAME))


def remove_record(root: ObjectStoragePath, endpoint_name: str) -> bool:
    """Forget the endpoint if the record is about it (a teardown of another name leaves the record alone)."""
    record = current_endpoint(root)
    if record is None or record.endpoint_name != endpoint_name:
        return False
    (root / RECORD_NAME).unlink()
    return True


def endpoint_spec(record: EndpointRecord, aws_conn_id: str) -> EndpointSpec:
    """How `EndpointClient` reaches the recorded endpoint (the transport the serving backend recorded)."""
    return EndpointSpec(
        record.transport,
        url=record.url,
        endpoint_name=record.endpoint_name,
        aws_conn_id=aws_conn_id,
        supports_choice=record.supports_choice,
    )


def resize_policy(record: EndpointRecord) -> ResizePolicy:
    """Images go to the endpoint resized as the model was trained on them (same budget, same geometry), unless the
    deploy overrode the budget (`record.image_budget`)."""
    return ResizePolicy(record.max_image_tokens, record.vision_geometry)


def smoke_image(uri: str | None, settings: Settings) -> tuple[bytes, str | None]:
    """The probe image and its label when known: the image at `uri` (inside the storage root or an input root,
    never through a symlink, at most MAX_FILE_BYTES), or a fixed digit from scikit-learn."""
    if uri:
        from tasks.model.images import MAX_FILE_BYTES

        path = storage.contained(uri, settings, param="smoke_image_uri")
        try:
            return storage.read_bytes_capped(path, MAX_FILE_BYTES), None
        except storage.Refused as exc:
            raise storage.ContainmentError(f"param smoke_image_uri={uri!r}: {exc}") from None
    from tasks.model.demo_data import digits
    from tasks.model.images import encode_png

    digit = next(digits(range(SMOKE_DIGIT_INDEX, SMOKE_DIGIT_INDEX + 1)))
    return encode_png(digit.image), digit.label


def smoke_test(
    spec: EndpointSpec,
    taxonomy: Taxonomy,
    image: bytes,
    *,
    prompt: str,
    policy: ResizePolicy,
    calibration: Calibration | None = None,
    expected: str | None = None,
) -> str:
    """Classify one known image; return its label. Raises `SmokeTestFailed` when the answer is not a label, and a
    plain (retried) RuntimeError when no answer came back even after the client's own retries.

    Correctness is logged, not required: one image says nothing about accuracy (evaluation did that), but an
    endpoint that cannot produce a label at all would turn a whole night's images into `invalid` rows.
    """
    client = EndpointClient(spec, taxonomy, policy=policy, prompt=prompt, calibration=calibration)
    result = client.classify(image, key="smoke-test")
    where = spec.url or spec.endpoint_name
    if result.status == "invalid":
        raise SmokeTestFailed(
            f"smoke test on {where}: the answer {result.raw_answer!r} is not a label ({result.error})"
        )
    if result.status != "ok" or result.label is None:
        raise RuntimeError(f"smoke test on {where}: no usable answer ({result.status}: {result.error})")
    if expected is not None and taxonomy.match(expected) is not None:
        verdict = "matches" if result.label == expected else f"differs from the expected {expected!r}"
        confidence = "unknown" if result.confidence is None else f"{result.confidence:.3f}"
        log.info(
            "smoke test label %r %s (confidence %s, %.0f ms)",
            result.label,
            verdict,
            confidence,
            (result.latency_s or 0) * 1000,
        )
    return result.label
