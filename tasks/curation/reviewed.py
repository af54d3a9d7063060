"""Reviewed labels folded into a curation (issue 22): a reviewer's label wins, and the report keeps each label's source.

Two kinds of reviewed image come from a snapshot (tasks.review.publish):
- a production image (its decision has a day): `incoming/dt=D/<key>`, added to the drop as `reviewed://dt=D/<key>`
  with the reviewed label, provided its bytes still hash to what was reviewed;
- a training image flagged as a likely mislabel (no day): matched by its decoded pixels' hash to the drop's image,
  whose label the review replaces.
A drop image with the same pixels as a reviewed production image takes the reviewed label too, so a review never
becomes a label conflict with the drop it corrects.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from airflow.sdk import ObjectStoragePath

from tasks.common import storage
from tasks.records.reviews import FoldedReviews, ReviewSnapshot
from tasks.review.decisions import Decision
from tasks.review.publish import latest_snapshot, read_snapshot

# Where reviewed production images appear among the drop's paths: no listed file or labels.csv row can name it (a
# listing has no empty path component), so a drop entry is never taken for a reviewed image.
REVIEWED_PREFIX = "reviewed://"
DROP, REVIEW = "drop", "review"  # a kept row's label_source


@dataclass(frozen=True)
class ReviewedLabels:
    """A snapshot's labels, with the storage root's incoming/ folder the reviewed production images are read from."""

    snapshot: ReviewSnapshot
    decisions: dict[str, Decision]
    incoming: ObjectStoragePath


def load(root: ObjectStoragePath, snapshot: ReviewSnapshot | None = None) -> ReviewedLabels | None:
    """`snapshot`'s labels (default: the newest published), or None when nothing was ever published."""
    snapshot = snapshot or latest_snapshot(root)
    if snapshot is None:
        return None
    return ReviewedLabels(snapshot, read_snapshot(root, snapshot), root / storage.INCOMING)


def _unsafe(key: str) -> bool:
    parts = key.split("/")
    return key.startswith("/") or any(part in ("", ".", "..") for part in parts)


class Fold:
    """One curation's use of reviewed labels; a Fold of None labels changes nothing."""

    def __init__(self, reviews: ReviewedLabels | None) -> None:
        self.reviews = reviews
        decisions = reviews.decisions.values() if reviews else ()
        self.by_pixels = {d.content_sha256: d for d in decisions if d.dt is None}
        self.production = {
            f"{REVIEWED_PREFIX}{storage.partition_name(d.dt)}/{d.key}": d for d in decisions if d.dt is not None
        }
        self._flagged = set(self.by_pixels)

    def items(self) -> list[tuple[str, str | None, ObjectStoragePath | None, str | None]]:
        """The reviewed production images, shaped as curate.discover yields the drop's entries."""
        items = []
        for rel, d in sorted(self.production.items()):
            assert self.reviews is not None and d.dt is not None
            if _unsafe(d.key):  # named by its hash: the key must not reach a path, nor pass for a hidden file
                problem = f"unsafe key {d.key!r} in the review snapshot: not read"
                items.append(
                    (f"{REVIEWED_PREFIX}{storage.partition_name(d.dt)}/{d.content_sha256}", None, None, problem)
                )
            else:
                file = self.reviews.incoming / storage.partition_name(d.dt) / d.key
                items.append((rel, d.label, file, None))
        return items

    def changed(self, rel: str, data: bytes) -> str | None:
        """Why a reviewed production image cannot be used: its bytes are not the ones reviewed."""
        d = self.production.get(rel)
        if d is None or hashlib.sha256(data).hexdigest() == d.content_sha256:
            return None
        return f"reviewed image changed since review: {rel} no longer hashes to {d.content_sha256[:12]}…"

    def label(self, rel: str, pixels: str, label: str) -> dict[str, str]:
        """The kept row's label and label_source (and the drop's label when a review replaced it)."""
        if (d := self.production.get(rel)) is not None:
            self.by_pixels.setdefault(pixels, d)
            return {"label": d.label, "label_source": REVIEW}
        if (d := self.by_pixels.get(pixels)) is None:
            return {"label": label, "label_source": DROP}
        self._flagged.discard(pixels)
        return {"label": d.label, "label_source": REVIEW} | ({"drop_label": label} if d.label != label else {})

    def report(self, kept: list[dict[str, Any]]) -> dict[str, Any] | None:
        """The report's `reviews`: which snapshot, and what it did to this dataset (FoldedReviews' fields, plus
        `unmatched`: flagged training images this drop does not hold)."""
        if self.reviews is None:
            return None
        folded = FoldedReviews(
            snapshot=self.reviews.snapshot.snapshot,
            digest=self.reviews.snapshot.digest,
            used=sum(row["label_source"] == REVIEW for row in kept),
            relabelled=sum("drop_label" in row for row in kept),
            added=sum(row["path"].startswith(REVIEWED_PREFIX) for row in kept),
        )
        return folded.to_dict() | {"labels": self.reviews.snapshot.labels, "unmatched": len(self._flagged)}
