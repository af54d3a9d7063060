"""Reviewed labels, published for curation: `review/published/<stamp>-<digest>.json`, one immutable snapshot each.

A snapshot holds every image's newest decision (tasks.review.decisions.reviewed_labels) at publish time, so the
dataset curated from it can be rebuilt, and the registry can name the exact reviews a model was trained on. Nothing
is published when the labels equal the newest snapshot's (a rerun) or fewer than `min_new` of them are new or
changed since (a retraining costs a training job: wait for enough corrections to be worth one).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from airflow.sdk import ObjectStoragePath

from tasks.common import storage
from tasks.records.base import storage_ref
from tasks.records.reviews import ReviewSnapshot
from tasks.review.decisions import Decision, reviewed_labels

PUBLISHED = "published"
DEFAULT_MIN_NEW_LABELS = 50


@dataclass(frozen=True)
class Published:
    """What a publish did: the snapshot written (None: nothing published) and why, in one line for the log."""

    snapshot: ReviewSnapshot | None
    reason: str


def published_dir(root: ObjectStoragePath) -> ObjectStoragePath:
    return root / storage.REVIEW / PUBLISHED


def label_key(decision: Decision) -> str:
    """What a snapshot's digest covers for one image: which image (its day and key, or none) and its label."""
    return f"{decision.content_sha256}\t{decision.dt or ''}\t{decision.key}\t{decision.label}"


def digest(labels: Mapping[str, Decision]) -> str:
    return hashlib.sha256("\n".join(sorted(label_key(d) for d in labels.values())).encode()).hexdigest()


def publish(
    root: ObjectStoragePath, *, min_new: int = DEFAULT_MIN_NEW_LABELS, now: datetime | None = None
) -> Published:
    """Publish the reviewed labels as a new snapshot when at least `min_new` are new or changed since the newest."""
    labels = reviewed_labels(root)
    if not labels:
        return Published(None, "nothing reviewed yet")
    latest = latest_snapshot(root)
    before = {label_key(d) for d in read_snapshot(root, latest).values()} if latest else set()
    new = sum(label_key(d) not in before for d in labels.values())
    if latest and latest.digest == digest(labels):
        return Published(None, f"the {len(labels)} reviewed labels are already published in {latest.snapshot}")
    if new < min_new:
        return Published(None, f"{new} reviewed label(s) new since the last snapshot, fewer than min_new={min_new}")
    when = now or datetime.now(UTC)
    value = digest(labels)
    path = published_dir(root) / f"{when:%Y%m%dT%H%M%SZ}-{value[:12]}.json"
    snapshot = ReviewSnapshot(
        snapshot=storage_ref(str(path), str(root)),
        digest=value,
        labels=len(labels),
        corrections=sum(d.verdict == "correct" for d in labels.values()),
        published_at=when.isoformat(timespec="seconds"),
    )
    doc = snapshot.to_dict() | {"decisions": [d.to_dict() for d in labels.values()]}
    storage.create_exclusive(path, (json.dumps(doc, indent=1) + "\n").encode("utf-8"))  # same second, same labels
    return Published(snapshot, f"published {len(labels)} reviewed labels ({new} new or changed) as {path}")


def latest_snapshot(root: ObjectStoragePath) -> ReviewSnapshot | None:
    """The newest published snapshot (names sort by publish time), or None."""
    names = sorted(entry.key for entry in storage.iter_files(published_dir(root)) if _is_snapshot(entry.key))
    if not names:
        return None
    path = published_dir(root) / names[-1]
    return ReviewSnapshot.from_dict(_header(storage.read_json(path)), str(path))


def read_snapshot(root: ObjectStoragePath, snapshot: ReviewSnapshot) -> dict[str, Decision]:
    """content_sha256 → decision, as published; the snapshot must lie in review/published/ of this root."""
    path = published_dir(root) / snapshot.snapshot.rpartition("/")[2]
    if storage_ref(str(path), str(root)) != snapshot.snapshot or not _is_snapshot(path.name):
        raise ValueError(f"{snapshot.snapshot} is not a snapshot under {published_dir(root)}")
    doc = storage.read_json(path)
    if doc is None:
        raise FileNotFoundError(f"review snapshot {path} does not exist")
    if ReviewSnapshot.from_dict(_header(doc), str(path)).digest != snapshot.digest:
        raise ValueError(f"{path} does not hold the labels of digest {snapshot.digest}")
    return {d["content_sha256"]: Decision.from_dict(d, f"{path}: decision") for d in doc["decisions"]}


def _header(doc: dict) -> dict:
    return {key: value for key, value in doc.items() if key != "decisions"}


def _is_snapshot(name: str) -> bool:
    return name.endswith(".json") and "/" not in name and not name.startswith(".")
