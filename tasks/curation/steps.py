"""The task body of `curate_dataset`: DAG params in, the curation result (XCom and asset extra) out."""

from __future__ import annotations

from typing import Any

from tasks.common import storage
from tasks.common.settings import Settings
from tasks.curation import reviewed
from tasks.curation.curate import CurationOptions, curate_uri
from tasks.model.taxonomy import load_taxonomy
from tasks.model.vision_tokens import ResizePolicy
from tasks.records.reviews import ReviewSnapshot


def curate(
    settings: Settings, params: dict[str, Any], run_stamp: str, review_events: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Curate `raw_uri` into `dataset_uri` (default `datasets/<taxonomy>-<run stamp>`), with images resized for the
    model this deployment trains (the training backend's vision geometry) at the `max_image_tokens` budget, and with
    the reviewed labels folded in when `fold_reviews` is on: the triggering reviewed_labels event's snapshot (the
    newest of them), else the newest published one."""
    from tasks.training.steps import training_backend

    default_uri = f"{settings.storage_uri}/{storage.DATASETS}/{params['taxonomy']}-{run_stamp}"
    dataset_uri = params["dataset_uri"] or default_uri
    opts = CurationOptions(
        test_fraction=params["test_fraction"],
        val_fraction=params["val_fraction"],
        seed=params["seed"],
        prompt_template=params["prompt_template"],
        resize_policy=ResizePolicy(params["max_image_tokens"], training_backend(settings).geometry),
    )
    reviews = None
    if params.get("fold_reviews", True):
        snapshots = [ReviewSnapshot.from_dict(extra, "reviewed_labels event") for extra in review_events or []]
        newest = max(snapshots, key=lambda s: s.published_at, default=None)
        reviews = reviewed.load(storage.root(settings), newest)
    taxonomy = load_taxonomy(params["taxonomy"])
    return curate_uri(params["raw_uri"], dataset_uri, taxonomy, opts, settings=settings, reviews=reviews)
