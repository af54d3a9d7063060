"""The task bodies of the review loop: queue a trained version's likely mislabels, publish the reviewed labels."""

from __future__ import annotations

import logging
from typing import Any

from airflow.sdk.exceptions import AirflowSkipException

from tasks.common import storage
from tasks.common.settings import Settings
from tasks.review import publish as publishing
from tasks.review import queue

log = logging.getLogger(__name__)


def queue_mislabels(settings: Settings, version: str) -> int:
    """Queue the version's flagged likely mislabels (label_flags.jsonl, written by evaluate) for review; a version
    that scored no split flagged nothing. Returns how many were added (none on a rerun)."""
    try:
        added = queue.enqueue_flags(storage.root(settings), version)
    except FileNotFoundError as exc:
        log.info("%s: nothing to queue", exc)
        return 0
    log.info("review queue: %d likely mislabel(s) of %s added", len(added), version)
    return len(added)


def publish(settings: Settings, params: dict[str, Any]) -> dict[str, Any]:
    """Publish the reviewed labels (the reviewed_labels asset's extra: the ReviewSnapshot), or skip — no asset
    event, so no curation and no retraining — when nothing is new enough to publish."""
    outcome = publishing.publish(storage.root(settings), min_new=int(params["min_new_labels"]))
    log.info("%s", outcome.reason)
    if outcome.snapshot is None:
        raise AirflowSkipException(f"nothing published: {outcome.reason}")
    return outcome.snapshot.to_dict()
