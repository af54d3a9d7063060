"""The Assets that chain the pipelines (curate → fine-tune → deploy → classify), and the loop back from the
reviewers' labels to curation.

Defined once here so producer and consumer DAGs can never disagree on a name.
"""

from __future__ import annotations

from airflow.sdk import Asset

CURATED_DATASET = Asset(name="curated_dataset", group="llava_classification")
PROMOTED_MODEL = Asset(name="promoted_model", group="llava_classification")
SERVING_ENDPOINT = Asset(name="serving_endpoint", group="llava_classification")
PREDICTIONS = Asset(name="predictions", group="llava_classification")
REVIEWED_LABELS = Asset(name="reviewed_labels", group="llava_classification")
