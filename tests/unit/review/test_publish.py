"""Publishing reviewed labels: one immutable snapshot per new set of labels, and nothing for a rerun or too few."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from tasks.review import decisions, publish
from tasks.review.queue import QueueItem
from tests.unit.review.conftest import sha

NOW = datetime(2026, 11, 9, 6, 0, tzinfo=UTC)


def item(key: str, label: str = "3") -> QueueItem:
    return QueueItem("2026-11-05", key, sha(key), "v1", label, 0.4, "8", "low_confidence", "2026-11-06T00:00:00+00:00")


def decide(root, digits, key: str, label: str) -> None:
    decisions.record(root, item(key), label, reviewer="ana", taxonomy=digits)


def test_nothing_reviewed_publishes_nothing(root) -> None:
    assert publish.publish(root, min_new=1) == publish.Published(None, "nothing reviewed yet")


def test_a_snapshot_holds_each_images_newest_label_and_counts_corrections(root, digits) -> None:
    decide(root, digits, "a.png", "3")
    decide(root, digits, "b.png", "5")
    decide(root, digits, "b.png", "6")  # superseded: the snapshot keeps the newest
    done = publish.publish(root, min_new=1, now=NOW)
    snapshot = done.snapshot
    assert (snapshot.labels, snapshot.corrections) == (2, 1)
    assert snapshot.snapshot.startswith("review/published/20261109T060000Z-") and snapshot.published_at.startswith(
        "2026"
    )
    labels = publish.read_snapshot(root, snapshot)
    assert {key: d.label for key, d in labels.items()} == {sha("a.png"): "3", sha("b.png"): "6"}
    assert publish.latest_snapshot(root) == snapshot


def test_a_rerun_or_too_few_new_labels_publishes_nothing(root, digits) -> None:
    decide(root, digits, "a.png", "3")
    first = publish.publish(root, min_new=1, now=NOW).snapshot
    again = publish.publish(root, min_new=1, now=NOW.replace(hour=7))
    assert again.snapshot is None and "already published" in again.reason
    decide(root, digits, "b.png", "5")
    decide(root, digits, "a.png", "4")  # a changed label counts as new
    assert "2 reviewed label(s) new" in publish.publish(root, min_new=3, now=NOW.replace(hour=8)).reason
    second = publish.publish(root, min_new=2, now=NOW.replace(hour=9)).snapshot
    assert second.digest != first.digest and publish.latest_snapshot(root) == second
    assert len(list(publish.published_dir(root).glob("2*.json"))) == 2


def test_a_snapshot_outside_review_published_or_edited_is_refused(root, digits) -> None:
    decide(root, digits, "a.png", "3")
    snapshot = publish.publish(root, min_new=1, now=NOW).snapshot
    with pytest.raises(ValueError, match="is not a snapshot under"):
        publish.read_snapshot(root, replace(snapshot, snapshot="datasets/x.json"))
    path = root / snapshot.snapshot
    doc = json.loads(path.read_text())
    doc["digest"] = "0" * 64
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="does not hold the labels"):
        publish.read_snapshot(root, snapshot)


def test_the_task_skips_when_nothing_is_published_so_nothing_retrains(root, digits, tmp_path) -> None:
    from airflow.sdk.exceptions import AirflowSkipException

    from tasks.common.settings import load_settings
    from tasks.review import steps

    settings = load_settings({"PIPELINE_BACKEND": "local", "PIPELINE_STORAGE_URI": tmp_path.as_uri()})
    decide(root, digits, "a.png", "3")
    with pytest.raises(AirflowSkipException, match="fewer than min_new=2"):
        steps.publish(settings, {"min_new_labels": 2})
    extra = steps.publish(settings, {"min_new_labels": 1})
    assert (extra["labels"], extra["corrections"]) == (1, 0) and extra["snapshot"].startswith("review/published/")
    with pytest.raises(AirflowSkipException, match="already published"):
        steps.publish(settings, {"min_new_labels": 1})
    assert steps.queue_mislabels(settings, "v-without-flags") == 0  # evaluated without label scores: nothing flagged
