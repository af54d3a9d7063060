"""The review queue: what people are asked to look at, under `review/queue/` in the storage root.

After a day is committed, two selections of its `ok` rows are queued into `review/queue/dt=D.jsonl`:
- the golden sample: a uniform random sample (the rows whose hash of dt and content ranks lowest, so a rerun picks
  the same rows and no file order matters), reviewed whatever its confidence, so its accuracy estimates production's;
- the most doubtful rows: the lowest calibrated confidence (rows without one cannot be ranked), up to a budget.
A row in both is queued once, as golden (the sample stays unbiased). Curation's likely mislabels
(`models/<v>/label_flags.jsonl`) go to `review/queue/model=<v>.jsonl`.

Idempotent: an image is queued at most once per file (keyed on dt + content_sha256), a rerun keeps what is queued
and only tops each reason up to its budget, and decisions live apart (tasks.review.decisions), so a requeue never
undoes one. Rows are streamed: memory holds the budgets, not the day.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from airflow.sdk import ObjectStoragePath

from tasks.common import storage
from tasks.records.base import parse, to_doc
from tasks.training.mislabels import FLAG_SCHEMA, FLAGS_FILE

QUEUE = "queue"
DEFAULT_LOW_CONFIDENCE_BUDGET = 50  # per day
DEFAULT_GOLDEN_SAMPLE = 20  # per day
ROW_FIELDS = ("key", "content_sha256", "status", "label", "confidence", "runner_up", "model_version")  # what it reads
Reason = Literal["low_confidence", "golden_sample", "mislabel_flag"]
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # a dt or model version used in a file name
CAS_ATTEMPTS = 5


@dataclass(frozen=True)
class QueueItem:
    """One image waiting for a reviewer, with what the model said about it."""

    dt: str | None  # the committed day; None for a mislabel flag (training data has no day)
    key: str  # relative to incoming/dt=D/; for a flag, its path in the raw drop (or its hash when unknown)
    content_sha256: str
    model_version: str
    label: str | None  # the model's answer (for a flag: the label it suggests)
    confidence: float | None
    runner_up: str | None
    reason: Reason
    queued_at: str
    given_label: str | None = None  # a flag's label in the dataset, which the model doubts

    @property
    def ident(self) -> tuple[str | None, str]:
        return self.dt, self.content_sha256

    def to_dict(self) -> dict[str, Any]:
        return to_doc(self)

    @classmethod
    def from_dict(cls, doc: Any, where: str = "queue item") -> QueueItem:
        return parse(cls, doc, where)


def queue_dir(root: ObjectStoragePath) -> ObjectStoragePath:
    return root / storage.REVIEW / QUEUE


def day_file(root: ObjectStoragePath, dt: str) -> ObjectStoragePath:
    return queue_dir(root) / f"{storage.partition_name(safe_name(dt))}.jsonl"


def flags_file(root: ObjectStoragePath, model_version: str) -> ObjectStoragePath:
    return queue_dir(root) / f"model={safe_name(model_version)}.jsonl"


def safe_name(value: str) -> str:
    """`value` when it can be part of a file name; a `/` or `..` from data must not steer a write."""
    if not SAFE_NAME.match(value) or ".." in value:
        raise ValueError(f"{value!r} cannot name a queue file")
    return value


def golden_rank(dt: str, content_sha256: str) -> int:
    """The row's place in the day's random order: a hash seeded by the day, the same on every rerun."""
    return int.from_bytes(hashlib.sha256(f"{dt}/{content_sha256}".encode()).digest()[:8], "big")


class Lowest:
    """The `k` entries of smallest key offered so far, in O(k) memory (a max-heap of negated numeric keys)."""

    def __init__(self, k: int) -> None:
        self.k, self._heap, self._order = k, [], itertools.count()

    def offer(self, key: tuple[float, ...], value: Any) -> None:
        if self.k <= 0:
            return
        entry = (tuple(-part for part in key), next(self._order), value)
        if len(self._heap) < self.k:
            heapq.heappush(self._heap, entry)
        elif entry > self._heap[0]:
            heapq.heapreplace(self._heap, entry)

    def sorted(self) -> list[Any]:
        return [value for *_, value in sorted(self._heap, reverse=True)]


def select(dt: str, rows: Iterable[Mapping[str, Any]], budget: int, golden: int) -> list[tuple[Reason, Mapping]]:
    """(reason, row) for the day's golden sample, then its most doubtful other rows, in one pass over `rows`."""
    sample, doubtful = Lowest(golden), Lowest(budget + golden)  # golden rows may take doubtful places
    for row in rows:
        if row["status"] != "ok":
            continue
        rank = golden_rank(dt, row["content_sha256"])
        sample.offer((rank,), row)
        if row.get("confidence") is not None:
            doubtful.offer((row["confidence"], rank), row)
    chosen = sample.sorted()
    taken = {row["content_sha256"] for row in chosen}
    rest = [row for row in doubtful.sorted() if row["content_sha256"] not in taken][:budget]
    return [("golden_sample", row) for row in chosen] + [("low_confidence", row) for row in rest]


def enqueue_day(
    root: ObjectStoragePath,
    dt: str,
    rows: Iterable[Mapping[str, Any]],
    *,
    budget: int = DEFAULT_LOW_CONFIDENCE_BUDGET,
    golden: int = DEFAULT_GOLDEN_SAMPLE,
    now: datetime | None = None,
) -> list[QueueItem]:
    """Queue a committed day's golden sample and most doubtful rows (`rows`: the committed rows, any order, at least
    ROW_FIELDS); returns the items added by this call (none on a rerun of the same rows)."""
    queued_at = _stamp(now)
    candidates = [
        QueueItem(
            dt=dt,
            key=row["key"],
            content_sha256=row["content_sha256"],
            model_version=row.get("model_version") or "",
            label=row["label"],
            confidence=row.get("confidence"),
            runner_up=row.get("runner_up"),
            reason=reason,
            queued_at=queued_at,
        )
        for reason, row in select(dt, rows, budget, golden)
    ]
    caps = {"golden_sample": golden, "low_confidence": budget}
    return _add(day_file(root, dt), candidates, caps)


def enqueue_flags(root: ObjectStoragePath, model_version: str, now: datetime | None = None) -> list[QueueItem]:
    """Queue curation's likely mislabels of a model version (`models/<v>/label_flags.jsonl`, schema label_flag/1,
    tasks.training.mislabels) as "mislabel_flag" items; returns the items added (none when already queued)."""
    source = root / storage.MODELS / safe_name(model_version) / FLAGS_FILE
    if not source.exists():
        raise FileNotFoundError(f"no {FLAGS_FILE} under {source.parent}: that version flagged nothing yet")
    queued_at = _stamp(now)
    candidates = []
    for n, line in enumerate(source.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        flag = json.loads(line)
        if flag.get("schema") != FLAG_SCHEMA:
            raise ValueError(f"{source}:{n}: schema {flag.get('schema')!r} is not {FLAG_SCHEMA}")
        candidates.append(
            QueueItem(
                dt=None,
                key=str(flag.get("path") or flag["sha256"]),
                content_sha256=str(flag["sha256"]),
                model_version=str(flag.get("model_version") or model_version),
                label=str(flag["suggested_label"]),
                confidence=float(flag["suggested_probability"]),
                runner_up=None,
                reason="mislabel_flag",
                queued_at=queued_at,
                given_label=str(flag["given_label"]),
            )
        )
    return _add(flags_file(root, model_version), candidates, caps=None)


def read_file(path: ObjectStoragePath) -> list[QueueItem]:
    """The items of one queue file (none when it does not exist)."""
    if not path.exists():
        return []
    return _parse(path.read_bytes(), str(path))


def read_queue(root: ObjectStoragePath) -> Iterator[QueueItem]:
    """Every queued item: the days in order, then the mislabel flags."""
    folder = queue_dir(root)
    names = sorted(entry.key for entry in storage.iter_files(folder) if entry.key.endswith(".jsonl"))
    for name in sorted(names, key=lambda n: not n.startswith("dt=")):
        yield from read_file(folder / name)


def _add(path: ObjectStoragePath, candidates: list[QueueItem], caps: Mapping[str, int] | None) -> list[QueueItem]:
    """Append the candidates that are not queued yet (and fit their reason's cap) to `path`: read, merge and a
    compare-and-swap write, retried if another writer changed the file in between."""
    for _ in range(CAS_ATTEMPTS):
        current = storage.read_versioned(path)
        items = _parse(current.data, str(path)) if current else []
        added = _new_items(items, candidates, caps)
        if not added:
            return []
        data = "".join(json.dumps(item.to_dict()) + "\n" for item in [*items, *added]).encode("utf-8")
        if current is None:
            written = storage.create_exclusive(path, data)
        else:
            written = storage.replace_if(path, data, current.version)
        if written is not None:
            return added
    raise RuntimeError(f"{path} kept changing during {CAS_ATTEMPTS} attempts to queue into it")


def _new_items(items: list[QueueItem], candidates: list[QueueItem], caps: Mapping[str, int] | None) -> list[QueueItem]:
    seen = {item.ident for item in items}
    counts = Counter(item.reason for item in items)
    added = []
    for item in candidates:
        if item.ident in seen or (caps is not None and counts[item.reason] >= caps[item.reason]):
            continue
        seen.add(item.ident)
        counts[item.reason] += 1
        added.append(item)
    return added


def _parse(data: bytes, where: str) -> list[QueueItem]:
    lines = data.decode("utf-8").splitlines()
    return [QueueItem.from_dict(json.loads(line), f"{where}:{n}") for n, line in enumerate(lines, 1) if line.strip()]


def _stamp(now: datetime | None) -> str:
    return (now or datetime.now(UTC)).isoformat(timespec="seconds")
