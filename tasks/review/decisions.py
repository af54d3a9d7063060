"""Reviewers' decisions on queued items, under `review/decisions/<content_sha256>/<seq>.json`.

Append-only, one write per decision: a decision is a new numbered file created exclusively (storage
.create_exclusive), so two reviewers deciding at once both land, in order, and nothing is ever rewritten. A decision
is about the image's content: the newest one per content_sha256 is its reviewed label. Recording the label the
newest decision already gives writes nothing (a double submit, or the same answer from Label Studio and the page);
a different label supersedes it. Labels must be in the taxonomy (stored canonical); every other string is kept
as data and never steers a path.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from airflow.sdk import ObjectStoragePath

from tasks.common import storage
from tasks.model.taxonomy import Taxonomy
from tasks.records.base import parse, to_doc
from tasks.review.queue import QueueItem, Reason

DECISIONS = "decisions"
SHA256 = re.compile(r"^[0-9a-f]{64}$")
SEQ_DIGITS = 6
MAX_REVIEWER_CHARS = 200
Verdict = Literal["confirm", "correct"]
Source = Literal["review", "label_studio"]


@dataclass(frozen=True)
class Decision:
    """A reviewer's label for one image, with the queued item it answers."""

    content_sha256: str
    label: str  # the reviewed label, canonical in the taxonomy
    verdict: Verdict  # confirm: the model's label stands; correct: the reviewer gave another
    predicted: str | None  # the model's label on the queued item
    reviewer: str
    decided_at: str
    source: Source  # where it was made: the Review page / API ("review") or a Label Studio import
    dt: str | None
    key: str
    reason: Reason
    model_version: str

    def to_dict(self) -> dict[str, Any]:
        return to_doc(self)

    @classmethod
    def from_dict(cls, doc: Any, where: str = "decision") -> Decision:
        return parse(cls, doc, where)


def decisions_dir(root: ObjectStoragePath) -> ObjectStoragePath:
    return root / storage.REVIEW / DECISIONS


def record(
    root: ObjectStoragePath,
    item: QueueItem,
    label: str,
    *,
    reviewer: str,
    taxonomy: Taxonomy,
    source: Source = "review",
    now: datetime | None = None,
) -> Decision | None:
    """Record that `reviewer` gives `item` the label `label` (its own label: a confirm; another: a correction).
    Returns the decision written, or None when the image's newest decision already gives that label."""
    canonical = taxonomy.match(label)
    if canonical is None:
        raise ValueError(f"label {label!r} is not in the {taxonomy.name} taxonomy")
    who = reviewer.strip()
    if not who or len(who) > MAX_REVIEWER_CHARS:
        raise ValueError(f"reviewer must be 1 to {MAX_REVIEWER_CHARS} characters, got {len(who)}")
    folder = decisions_dir(root) / _checked_sha(item.content_sha256)
    decision = Decision(
        content_sha256=item.content_sha256,
        label=canonical,
        verdict="confirm" if canonical == item.label else "correct",
        predicted=item.label,
        reviewer=who,
        decided_at=(now or datetime.now(UTC)).isoformat(timespec="seconds"),
        source=source,
        dt=item.dt,
        key=item.key,
        reason=item.reason,
        model_version=item.model_version,
    )
    while True:  # a concurrent decision took the next number: look again
        seq, newest = _newest(folder)
        if newest is not None and newest.label == canonical:
            return None
        name = f"{seq + 1:0{SEQ_DIGITS}d}.json"
        data = (json.dumps(decision.to_dict(), indent=2) + "\n").encode("utf-8")
        if storage.create_exclusive(folder / name, data) is not None:
            return decision


def reviewed_labels(root: ObjectStoragePath) -> dict[str, Decision]:
    """content_sha256 → its newest decision (the reviewed label, who gave it, when and where)."""
    numbered: dict[str, str] = {}
    for entry in storage.iter_files(decisions_dir(root)):
        sha, _, name = entry.key.partition("/")
        if SHA256.match(sha) and _is_numbered(name):
            numbered[sha] = max(numbered.get(sha, name), name)
    return {sha: _read(decisions_dir(root) / sha / name) for sha, name in sorted(numbered.items())}


def _newest(folder: ObjectStoragePath) -> tuple[int, Decision | None]:
    names = sorted(entry.key for entry in storage.iter_files(folder) if _is_numbered(entry.key))
    if not names:
        return 0, None
    return int(names[-1].removesuffix(".json")), _read(folder / names[-1])


def _is_numbered(name: str) -> bool:
    return len(name) == SEQ_DIGITS + 5 and name.endswith(".json") and name[:SEQ_DIGITS].isdigit()


def _read(path: ObjectStoragePath) -> Decision:
    return Decision.from_dict(storage.read_json(path), str(path))


def _checked_sha(value: str) -> str:
    if not SHA256.match(value):
        raise ValueError(f"content_sha256 {value!r} is not a lowercase hex SHA-256")
    return value
