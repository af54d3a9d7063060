"""The committed format of `predictions/dt=D/`: result rows, run-scoped files, and the `_SUCCESS` manifest.

A run writes its files under a fresh `run=<token>/` prefix and publishes them by writing `_SUCCESS`, which lists
every file with its row count. Readers trust only files listed there, so a half-written run is never visible and a
rerun replaces the partition in one atomic write; the replaced run's files are deleted after the switch.

One writer per partition: publish holds a lease (`_LEASE`, tasks.common.leases: compare-and-swap on the storage's
own atomic primitive) while it checks its files, writes `_SUCCESS` and deletes the other runs, so two runs of one
dt cannot interleave those steps. The loser fails loudly (PublishConflict naming the holder); a run whose files a
concurrent publish already replaced fails too, before it writes anything.
"""

from __future__ import annotations

import io
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import ObjectStoragePath
from airflow.sdk.exceptions import AirflowFailException

from tasks.common import leases, storage

if TYPE_CHECKING:
    import pyarrow as pa

SUCCESS = "_SUCCESS"
LEASE = "_LEASE"
LEASE_TTL_S = 120.0  # a publish takes seconds and renews its lease every LEASE_RENEW_S: older means killed
LEASE_RENEW_S = 30.0
RUN_PREFIX = "run="
STATUSES = ("ok", "invalid", "rejected", "failed")
CONFIDENCE_BINS = 20  # of RowStats' confidence histogram: thresholds in steps of 0.05
ROW_GROUP_ROWS = 10_000  # readers stream a file a row group at a time: keep groups small whatever the file

# One row per image: (name, Arrow type name). Nothing time-dependent but latency, so a rerun that reclassifies
# reproduces the same rows, and a rerun that carries rows over reproduces them byte for byte.
ROW_COLUMNS: tuple[tuple[str, str], ...] = (
    ("key", "string"),  # path relative to the incoming partition
    ("content_sha256", "string"),  # of the file's bytes
    ("source_size", "int64"),
    ("source_version", "string"),  # S3 ETag or local mtime: with key and size, what incremental skip compares
    ("status", "string"),  # ok | invalid | rejected | failed
    ("label", "string"),
    ("raw_answer", "string"),
    ("reason", "string"),  # why a row is not ok
    ("prompt_tokens", "int64"),
    ("completion_tokens", "int64"),
    ("latency_s", "float64"),
    ("attempts", "int64"),
    ("confidence", "float64"),  # calibrated probability of `label` (tasks.serving.confidence); null: not known
    ("runner_up", "string"),  # the next most probable label
    ("margin", "float64"),  # confidence minus the runner-up's probability
    ("model_version", "string"),
    ("endpoint", "string"),
)


def row_schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema([(name, getattr(pa, kind)()) for name, kind in ROW_COLUMNS])


@dataclass
class RowStats:
    """What the quality gate and the cost ledger need from a set of rows, without the rows."""

    rows: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    labels: Counter[str] = field(default_factory=Counter)  # of `ok` rows
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # Calibrated confidence of the `ok` rows that have one: its sum (mean = estimated accuracy) and histogram
    # (CONFIDENCE_BINS equal bins over [0, 1]: the low-confidence share and drift without the rows).
    confidence_sum: float = 0.0
    confidence_histogram: list[int] = field(default_factory=lambda: [0] * CONFIDENCE_BINS)

    @property
    def confident_rows(self) -> int:
        return sum(self.confidence_histogram)

    @property
    def mean_confidence(self) -> float | None:
        """The mean calibrated confidence: the label-free estimate of this set's accuracy (None: no confidence)."""
        return self.confidence_sum / self.confident_rows if self.confident_rows else None

    def share_below(self, threshold: float) -> float | None:
        """The share of confident rows below `threshold` (rounded to a bin edge)."""
        if not self.confident_rows:
            return None
        return sum(self.confidence_histogram[: round(threshold * CONFIDENCE_BINS)]) / self.confident_rows

    def add(self, table: pa.Table | pa.RecordBatch) -> RowStats:
        import numpy as np
        import pyarrow.compute as pc

        self.rows += table.num_rows
        self.statuses.update(_value_counts(table.column("status")))
        ok = pc.equal(table.column("status"), "ok")
        self.labels.update(_value_counts(pc.filter(table.column("label"), ok)))
        self.prompt_tokens += pc.sum(table.column("prompt_tokens")).as_py() or 0
        self.completion_tokens += pc.sum(table.column("completion_tokens")).as_py() or 0
        if "confidence" in table.schema.names:  # files committed before confidence existed have none
            confidence = pc.drop_null(pc.filter(table.column("confidence"), ok)).to_numpy(zero_copy_only=False)
            self.confidence_sum += float(confidence.sum())
            counts, _ = np.histogram(confidence, bins=CONFIDENCE_BINS, range=(0.0, 1.0))
            self.confidence_histogram = [a + int(b) for a, b in zip(self.confidence_histogram, counts, strict=True)]
        return self

    def merge(self, other: RowStats) -> RowStats:
        self.rows += other.rows
        self.statuses.update(other.statuses)
        self.labels.update(other.labels)
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.confidence_sum += other.confidence_sum
        self.confidence_histogram = [
            a + b for a, b in zip(self.confidence_histogram, other.confidence_histogram, strict=True)
        ]
        return self

    @classmethod
    def of_parquet(cls, path: Path) -> RowStats:
        """Stats of a local Parquet file of rows, read in batches (flat memory for any size)."""
        import pyarrow.parquet as pq

        stats = cls()
        source = pq.ParquetFile(path)
        columns = ["status", "label", "prompt_tokens", "completion_tokens", "confidence"]
        columns = [name for name in columns if name in source.schema_arrow.names]
        for batch in source.iter_batches(batch_size=65_536, columns=columns, use_threads=False):
            stats.add(batch)
        return stats

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "statuses": {s: self.statuses.get(s, 0) for s in STATUSES},
            "labels": dict(sorted(self.labels.items())),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "confidence_sum": round(self.confidence_sum, 6),
            "confidence_histogram": list(self.confidence_histogram),
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> RowStats:
        return cls(
            rows=doc.get("rows", 0),
            statuses=Counter(doc.get("statuses", {})),
            labels=Counter(doc.get("labels", {})),
            prompt_tokens=doc.get("prompt_tokens", 0),
            completion_tokens=doc.get("completion_tokens", 0),
            confidence_sum=doc.get("confidence_sum", 0.0),
            confidence_histogram=list(doc.get("confidence_histogram") or [0] * CONFIDENCE_BINS),
        )


def _value_counts(column: Any) -> dict[str, int]:
    return {item["values"]: item["counts"] for item in column.value_counts().to_pylist() if item["values"]}


def partition_dir(predictions_root: ObjectStoragePath, dt: str) -> ObjectStoragePath:
    return predictions_root / f"dt={dt}"


def new_run_token(now: datetime | None = None) -> str:
    """Sortable and unique: two attempts at the same partition never share a prefix."""
    import uuid

    now = now or datetime.now(UTC)
    return f"{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"


def run_dir(partition: ObjectStoragePath, token: str) -> ObjectStoragePath:
    return partition / f"{RUN_PREFIX}{token}"


def read_success(partition: ObjectStoragePath) -> dict[str, Any] | None:
    """The committed manifest, or None when the partition was never committed."""
    return storage.read_json(partition / SUCCESS)


def committed_files(partition: ObjectStoragePath) -> list[tuple[ObjectStoragePath, int]]:
    """(file, row count) for every file of the committed partition; empty when it was never committed."""
    manifest = read_success(partition)
    return [(partition / f["path"], int(f["rows"])) for f in manifest["files"]] if manifest else []


def write_table(path: ObjectStoragePath, table: pa.Table) -> None:
    """One Parquet file, written atomically (a retried task overwrites its own file, never half of it)."""
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=ROW_GROUP_ROWS)
    storage.write_bytes_atomic(path, buf.getvalue())


def read_table(path: ObjectStoragePath) -> pa.Table:
    import pyarrow.parquet as pq

    # No reader threads: Arrow's can abort the interpreter at exit (apache/arrow#34314), and files are small.
    return pq.read_table(io.BytesIO(path.read_bytes()), schema=row_schema(), use_threads=False)


def read_partition(partition: ObjectStoragePath) -> pa.Table:
    """All committed rows of a partition (empty, with the row schema, when nothing is committed)."""
    import pyarrow as pa

    try:
        tables = [read_table(path) for path, _ in committed_files(partition)]
    except FileNotFoundError:  # a publish replaced the partition between reading _SUCCESS and its files
        tables = [read_table(path) for path, _ in committed_files(partition)]
    return pa.concat_tables(tables) if tables else row_schema().empty_table()


class PublishConflict(AirflowFailException):
    """Another run of the same dt holds the partition (its claim or its publish lease), or already replaced this
    run's files: retrying cannot help. The message names the holder."""


CLEAR_LEASE_HINT = (
    "If that run is dead (killed), its lease is taken over as soon as Airflow no longer runs its task, or at the "
    "expiry; to clear it by hand, delete the lease file and clear this task. If it is alive, it is publishing this "
    "dt: nothing to do."
)


def publish(
    partition: ObjectStoragePath,
    token: str,
    files: list[dict[str, Any]],
    summary: dict[str, Any],
    *,
    owner: dict[str, Any] | None = None,
    stale: leases.Judge = leases.expired,
) -> dict:
    """Make run `token` the partition's content: under the partition's lease, verify its files, write `_SUCCESS`,
    then delete older runs.

    `files` are {"path": relative to the partition, "rows": n}. A listed file that is missing fails the commit
    before anything changes (a concurrent run of the same dt published and deleted it, or a shard never wrote it),
    so `_SUCCESS` never lists a file that storage lacks. `owner` (the task instance) is recorded in the lease;
    `stale` decides when another holder's lease may be taken over (default: once expired).
    """
    lease = leases.acquire(
        partition / LEASE,
        leases.Holder(run=token, owner=owner or {}, expires_at=time.time() + LEASE_TTL_S),
        stale=stale,
        conflict=PublishConflict,
        explain=lambda held: (
            f"{partition} is being published by {held.describe()}; its lease {held.expiry()}. "
            f"This run ({token}) did not publish. {CLEAR_LEASE_HINT}"
        ),
    )
    with leases.held(lease, ttl_s=LEASE_TTL_S, every_s=LEASE_RENEW_S):
        missing = [f["path"] for f in files if not (partition / f["path"]).exists()]
        if missing:
            raise PublishConflict(
                f"cannot commit {partition}: {len(missing)} listed file(s) missing, e.g. {missing[:3]} — another run "
                "of this dt published (and replaced this run's files), or a shard never wrote them; nothing changed"
            )
        manifest = {
            **summary,
            "run": token,
            "files": files,
            "committed_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        lease.renew(LEASE_TTL_S)  # still ours at the commit point, for a whole TTL: no other holder interleaves
        storage.write_json(partition / SUCCESS, manifest)
        for stale_run in _other_runs(partition, token):
            storage.remove_tree(stale_run, owner=partition)
    return manifest


def _other_runs(partition: ObjectStoragePath, token: str) -> Iterator[ObjectStoragePath]:
    if not partition.exists():
        return
    for child in partition.iterdir():
        if child.name.startswith(RUN_PREFIX) and child.name != f"{RUN_PREFIX}{token}":
            yield child
