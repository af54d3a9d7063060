"""Which `dt` a run processes, the partition listing as a manifest file, incremental skip, and the shard plan.

Memory stays flat however large a partition grows: the listing streams into a Parquet file in batches, DuckDB sorts
it on disk under a memory limit, a one-pass merge with the committed (key-sorted) files drops what this model version
already classified, and shards are small descriptors — (manifest uri, offset, count) — never key lists.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import ObjectStoragePath

from tasks.common import leases, storage
from tasks.common.storage import iter_files
from tasks.model.images import is_ignored
from tasks.nightly import predictions
from tasks.nightly.predictions import RowStats

ANSWERS_SUFFIX = ".answers"  # <run>/shard-NNNNN.answers/part-*.parquet: a shard's answers as they arrive (AnswerLog)

log = logging.getLogger(__name__)

DT_FORMAT = "%Y-%m-%d"
DEFAULT_CRON = "0 0 * * *"  # the run for dt=D starts when D has ended, at 00:00 UTC on D+1
DEFAULT_START_DATE = date(2026, 11, 1)
MAX_SHARDS = 256  # well under Airflow's max_map_length (1024): a huge partition gets bigger shards instead
LISTING_BATCH = predictions.ROW_GROUP_ROWS
DUCKDB_MEMORY_LIMIT = "32MB"  # the listing sort spills to disk beyond this
MANIFEST_NAME = "_plan/manifest.parquet"
CARRIED_NAME = "carried.parquet"
MANIFEST_COLUMNS = ("key", "size", "version", "problem")
FINAL_STATUSES = ("ok", "rejected")  # carried over by a rerun; `failed` and `invalid` rows are classified again


@dataclass(frozen=True)
class NightlySchedule:
    """The DAG's cron and first dt, from PIPELINE_CLASSIFY_CRON / PIPELINE_CLASSIFY_START_DATE."""

    cron: str = DEFAULT_CRON
    start_date: date = DEFAULT_START_DATE

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> NightlySchedule:
        env = os.environ if env is None else env
        return cls(
            cron=env.get("PIPELINE_CLASSIFY_CRON", DEFAULT_CRON),
            start_date=date.fromisoformat(env.get("PIPELINE_CLASSIFY_START_DATE", DEFAULT_START_DATE.isoformat())),
        )


WAIT_TIMEOUT = timedelta(hours=24)  # wait_for_partition: how long it may wait for a dt's first image
POKE_INTERVAL = timedelta(minutes=5)


def partition_dt(
    logical_date: datetime | None, data_interval_start: datetime, run_after: datetime | None = None
) -> str:
    """The partition a run processes: the UTC day of its logical date — unless that day was still in progress when
    the run was made (`run_after`, the same UTC day): then the last complete day, the one before.

    Scheduled and backfill runs of the DAG's CronDataIntervalTimetable have the interval [D, D+1 day), logical
    date D and run_after D+1, so `backfill create --from-date A --to-date B` makes exactly one run per dt in
    [A, B], and `dags test classify_images D` processes D for a past D. The exception is for the trigger form,
    which pre-fills the logical date with *now*: run with its defaults, it processes yesterday (the last complete
    day) instead of waiting for today to end. A manual run without a logical date processes its inferred
    interval's start, the last complete day too. A later day (the future) keeps its dt and is refused by the
    sensor (steps.look_for_partition)."""
    stamp = (logical_date or data_interval_start).astimezone(UTC)
    if logical_date is not None and run_after is not None and stamp.date() == run_after.astimezone(UTC).date():
        return (stamp.date() - timedelta(days=1)).strftime(DT_FORMAT)
    return stamp.strftime(DT_FORMAT)


def say_when_nothing_ran(context: Mapping[str, Any]) -> str | None:
    """The DAG's on_success_callback: a manual run (or `dags test`) whose logical date is before
    PIPELINE_CLASSIFY_START_DATE gets no task instances — Airflow creates none before the DAG's start date except for
    backfills — and "succeeds" having done nothing. Airflow hands such a run's callback a context without `dag_run`
    (there is no task instance to build one from). Such a run must not stay green: it gets a run note saying so,
    with the command that does process the day, and is marked failed (run_notes.write_note, through the REST API;
    the dag-processor log has the same text when the API cannot be reached)."""
    from tasks.common import run_notes

    if "dag_run" in context:  # a task instance existed: the run did its work
        return None
    dag_id = getattr(context.get("dag"), "dag_id", "classify_images")
    run_id = str(context.get("run_id"))
    start = NightlySchedule.from_env().start_date.isoformat()
    note = run_notes.nothing_ran_note(run_id, run_notes.logical_date(dag_id, run_id), start, dag_id)
    log.error("NOTHING RAN in %s: the run has no task instances.\n%s", run_id, note)
    run_notes.write_note(dag_id, run_id, note, state="failed")
    return note


CLAIM = "_CLAIM"
ACTIVE_STATES = ("queued", "running")


def claim_dt(partition: ObjectStoragePath, run_id: str, dagrun_state: Callable[[str], str]) -> None:
    """One active DagRun per dt: hold `<partition>/_CLAIM` for this run, or refuse (PublishConflict naming the
    holder) while the run recorded there is still queued or running.

    Why here and not a pool: a pool would serialise publishes, not stop two runs of one dt (the nightly run, a
    backfill, a manual run whose logical date falls on D) from classifying and publishing one after the other;
    `max_active_runs` counts runs of any dt. The claim is a lease without expiry (tasks.common.leases): taken over
    by compare-and-swap once its run is no longer active, and a cleared or retried run keeps its run_id, so it takes
    its own claim back. Publishing still takes the partition's lease (predictions.publish): the claim saves
    endpoint time, the lease keeps the partition consistent.
    """

    def state_of(held: leases.Holder) -> str:
        try:
            return dagrun_state(held.run)
        except Exception as exc:  # a deleted run (db clean): it is not active
            log.warning("state of %s unknown (%s): treating it as finished", held.run, exc)
            return "unknown"

    def stale(held: leases.Holder) -> str | None:
        if held.run == run_id:
            return "it is this run's own claim (a retry or a clear)"
        state = state_of(held)
        return None if state in ACTIVE_STATES else f"its DagRun is {state}"

    leases.acquire(
        partition / CLAIM,
        leases.Holder(run=run_id),
        stale=stale,
        conflict=predictions.PublishConflict,
        explain=lambda held: (
            f"{partition.name} is being processed by DagRun {held.run} ({state_of(held)}); this run "
            f"({run_id}) refuses so that two runs of one dt never classify and publish it side by side. Wait for it, "
            "then clear this run if still needed."
        ),
    )


@dataclass(frozen=True)
class Shard:
    """Rows [offset, offset + count) of the manifest: small enough to pass as a mapped task argument."""

    manifest_uri: str
    offset: int
    count: int
    index: int


@dataclass(frozen=True)
class PartitionPlan:
    dt: str
    run_token: str
    listed: int  # files found in the incoming partition
    ignored: int  # hidden/OS files (.DS_Store, __MACOSX/…): not images, never rows
    carried: int  # rows kept from the committed partition (same model version, same file)
    to_classify: int
    shards: list[Shard]
    carried_stats: dict[str, Any] = field(default_factory=dict)  # RowStats of the carried rows
    carried_busy_seconds: float = 0.0

    @property
    def images(self) -> int:
        return self.listed - self.ignored

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> PartitionPlan:
        return cls(**{**doc, "shards": [Shard(**s) for s in doc["shards"]]})


def image_keys(root: ObjectStoragePath) -> Iterator[str]:
    """Keys of the entries below root that are not hidden/OS bookkeeping, streamed."""
    return (entry.key for entry in iter_files(root) if not is_ignored(entry.key))


def write_listing(root: ObjectStoragePath, dest: Path) -> tuple[int, int]:
    """Stream the listing of `root` into a Parquet file (key, size, version, problem); returns (listed, ignored).

    An entry with a problem (symlink, special file, unsafe name) is a manifest row like any other: its shard records
    it as rejected without reading it, so listed == ignored + rows holds whatever the partition holds."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("key", pa.string()), ("size", pa.int64()), ("version", pa.string()), ("problem", pa.string())])
    listed = ignored = 0
    batch: list[tuple[str, int, str, str | None]] = []
    with pq.ParquetWriter(dest, schema) as writer:

        def flush() -> None:
            if batch:
                columns = [pa.array(column) for column in zip(*batch, strict=True)]
                writer.write_table(pa.Table.from_arrays(columns, schema=schema))
                batch.clear()

        for entry in iter_files(root):
            listed += 1
            if is_ignored(entry.key):
                ignored += 1
                continue
            batch.append(entry)
            if len(batch) >= LISTING_BATCH:
                flush()
        flush()
    return listed, ignored


def plan_partition(
    incoming: ObjectStoragePath,
    partition: ObjectStoragePath,
    *,
    dt: str,
    model_version: str,
    shard_size: int,
    reclassify: bool = False,
) -> PartitionPlan:
    """List `incoming`, carry over what the committed partition already classified with `model_version`, and shard
    the rest. Writes the manifest (and the carried rows) under a fresh run prefix of `partition`."""
    if shard_size < 1:
        raise ValueError("shard_size must be >= 1")
    token = predictions.new_run_token()
    run = predictions.run_dir(partition, token)
    with tempfile.TemporaryDirectory(prefix="plan-") as tmp:
        work = Path(tmp)
        listed, ignored = write_listing(incoming, work / "listing.parquet")
        prior = [] if reclassify else _prior_files(partition, model_version, work)
        todo, carried = _skip_classified(work, prior, shard_size, model_version)
        manifest = run / MANIFEST_NAME
        _upload(todo, manifest)
        carried_stats = RowStats.of_parquet(carried) if carried else RowStats()
        if carried_stats.rows:
            _upload(carried, run / CARRIED_NAME)
    to_classify = listed - ignored - carried_stats.rows
    size = max(shard_size, math.ceil(to_classify / MAX_SHARDS))
    shards = [
        Shard(str(manifest), offset, min(size, to_classify - offset), index)
        for index, offset in enumerate(range(0, to_classify, size))
    ]
    return PartitionPlan(
        dt=dt,
        run_token=token,
        listed=listed,
        ignored=ignored,
        carried=carried_stats.rows,
        to_classify=to_classify,
        shards=shards,
        carried_stats=carried_stats.to_dict(),
        carried_busy_seconds=_carried_busy_seconds(partition, carried_stats.rows),
    )


def _prior_files(partition: ObjectStoragePath, model_version: str, work: Path) -> list[Path]:
    """Local copies of every file whose rows a new run may carry over: the committed partition's when it was made
    by the same model version, and the shard files and flushed answers (classification.AnswerLog) of runs that
    never committed — a crashed or killed run's answers are paid for. Rows are still filtered one by one (model
    version, final status, same file) by the merge."""
    manifest = predictions.read_success(partition)
    sources = (
        [path for path, _ in predictions.committed_files(partition)]
        if manifest and manifest.get("model_version") == model_version
        else []
    )
    committed = (manifest or {}).get("run")
    for run in _uncommitted_runs(partition, committed):
        for child in run.iterdir():
            if child.name.startswith("shard-") and child.name.endswith(".parquet"):
                sources.append(child)
            elif child.name.endswith(ANSWERS_SUFFIX):
                sources += sorted(child.iterdir(), key=lambda p: p.name)
    copies = []
    for i, path in enumerate(sources):
        copy = work / f"prior-{i:05d}.parquet"
        with path.open("rb") as src, copy.open("wb") as dst:
            shutil.copyfileobj(src, dst)
        copies.append(copy)
    return copies


def _uncommitted_runs(partition: ObjectStoragePath, committed: str | None) -> Iterator[ObjectStoragePath]:
    if not partition.exists():
        return
    for child in partition.iterdir():
        if child.name.startswith(predictions.RUN_PREFIX) and child.name != f"{predictions.RUN_PREFIX}{committed}":
            yield child


def _skip_classified(work: Path, prior: list[Path], shard_size: int, model_version: str) -> tuple[Path, Path | None]:
    """(manifest of images still to classify, sorted by key; carried rows sorted by key, or None).

    DuckDB sorts the listing (an external sort: it spills to disk under its memory limit). The committed files are
    each sorted by key already, so a k-way merge of them, joined with the sorted listing in one pass, decides
    every image while holding one small batch per file — a hash join would hold the whole partition. A prior row
    is carried when the same file (key, size, version) is still listed, the listing found no problem with it, it
    was made by `model_version`, and its status is final (`ok` or `rejected`); `failed` and `invalid` rows are
    retried (an out-of-taxonomy answer is often a transient glitch of the endpoint, and a rerun after a fix must
    not keep it).
    """
    import duckdb

    listing, todo, carried = work / "listing.parquet", work / "todo.parquet", work / "carried.parquet"
    ordered = work / "listing-sorted.parquet" if prior else todo
    con = duckdb.connect(config={"memory_limit": DUCKDB_MEMORY_LIMIT, "threads": 1, "temp_directory": str(work)})
    try:
        con.execute(
            f"COPY (SELECT * FROM read_parquet('{listing}') ORDER BY key) TO '{ordered}'"
            f" (FORMAT parquet, ROW_GROUP_SIZE {shard_size})"
        )
    finally:
        con.close()
    if prior:
        _merge_join(ordered, prior, todo, carried, shard_size, model_version)
    return todo, carried if prior else None


def _merge_join(
    listing: Path, prior: list[Path], todo: Path, carried: Path, shard_size: int, model_version: str
) -> None:
    import heapq

    import pyarrow as pa
    import pyarrow.parquet as pq

    listing_file = pq.ParquetFile(listing)
    prior_rows = heapq.merge(*(_final_rows(path, model_version) for path in prior), key=lambda row: row[0])
    current = next(prior_rows, None)
    pending: list[tuple[str, int, str, str | None]] = []
    kept: list[tuple[pa.RecordBatch, int]] = []
    with (
        pq.ParquetWriter(todo, listing_file.schema_arrow) as todo_writer,
        pq.ParquetWriter(carried, predictions.row_schema()) as carried_writer,
    ):
        for batch in listing_file.iter_batches(batch_size=LISTING_BATCH, use_threads=False):
            for entry in zip(*(batch.column(c).to_pylist() for c in MANIFEST_COLUMNS), strict=True):
                while current is not None and current[0] < entry[0]:
                    current = next(prior_rows, None)
                if current is not None and current[:3] == entry[:3] and entry[3] is None:
                    kept.append(current[3:])
                else:
                    pending.append(entry)
            if pending:
                todo_writer.write_table(
                    pa.Table.from_arrays(
                        [pa.array(c) for c in zip(*pending, strict=True)], schema=listing_file.schema_arrow
                    ),
                    row_group_size=shard_size,
                )
                pending.clear()
            if kept:
                carried_writer.write_table(_take(kept))
                kept.clear()


def _final_rows(path: Path, model_version: str) -> Iterator[tuple[str, int, str, Any, int]]:
    """(key, size, version, batch, index) of a row file's final rows made by `model_version`, in the file's (key)
    order."""
    import pyarrow.parquet as pq

    previous = ""
    names = predictions.row_schema().names
    for batch in pq.ParquetFile(path).iter_batches(batch_size=256, columns=names, use_threads=False):
        columns = (
            batch.column(c).to_pylist() for c in ("key", "source_size", "source_version", "status", "model_version")
        )
        for index, (key, size, version, status, made_by) in enumerate(zip(*columns, strict=True)):
            if key <= previous:  # every row file is written in key order; a merge needs that
                raise RuntimeError(f"{path.name} is not sorted by key at {key!r}")
            previous = key
            if status in FINAL_STATUSES and made_by == model_version:
                yield key, size, version, batch, index


def _take(kept: list[tuple[Any, int]]):
    """The kept rows, in order, as one table: a `take` per run of rows from the same batch."""
    import pyarrow as pa

    parts, start = [], 0
    for end in range(1, len(kept) + 1):
        if end == len(kept) or kept[end][0] is not kept[start][0]:
            parts.append(kept[start][0].take([index for _, index in kept[start:end]]))
            start = end
    return pa.Table.from_batches(parts).cast(predictions.row_schema())


def _upload(local: Path, dest: ObjectStoragePath) -> None:
    """Copy a local file to storage in chunks; published under its final name only when complete (a local rename,
    or an S3 upload that becomes visible at the end)."""
    if dest.protocol != "file":
        dest.fs.put_file(str(local), dest.path)
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp"
    shutil.copyfile(local, tmp.path)
    tmp.rename(dest)


def _carried_busy_seconds(partition: ObjectStoragePath, carried_rows: int) -> float:
    """Carried rows keep their share of the endpoint time that produced them, so a rerun that reclassifies
    nothing reports the same partition cost instead of $0."""
    manifest = predictions.read_success(partition) or {}
    rows = manifest.get("rows", 0)
    return manifest.get("busy_seconds", 0.0) * carried_rows / rows if rows else 0.0


def shard_digests(shards: list[Shard], conn_id: str | None = None) -> list[str]:
    """sha256 of each shard's images (key and version, in manifest order), reading their manifest once, streamed:
    what a shard holds, for names that must change when its images do — the same offset and count can hold other
    images after a carry-over changed the manifest."""
    import pyarrow.parquet as pq

    if not shards:
        return []
    if len({shard.manifest_uri for shard in shards}) != 1:
        raise ValueError("shard_digests takes the shards of one manifest")
    hashes = [hashlib.sha256() for _ in shards]
    owner = {shard.offset: i for i, shard in enumerate(shards)}  # the first row of each shard
    current, row = None, 0
    with storage.storage_path(shards[0].manifest_uri, conn_id).open("rb") as f:
        batches = pq.ParquetFile(f).iter_batches(
            batch_size=LISTING_BATCH, columns=["key", "version"], use_threads=False
        )
        for batch in batches:
            for key, version in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist(), strict=True):
                current = owner.get(row, current)
                if current is not None and row < shards[current].offset + shards[current].count:
                    hashes[current].update(f"{key}\0{version}\n".encode())
                row += 1
    return [h.hexdigest() for h in hashes]


def read_shard(shard: Shard, conn_id: str | None = None) -> list[tuple[str, int, str, str | None]]:
    """The shard's manifest rows (key, size, version, problem), reading only the row groups that overlap it."""
    import pyarrow.parquet as pq

    with storage.storage_path(shard.manifest_uri, conn_id).open("rb") as f:
        parquet = pq.ParquetFile(f)
        rows: list[tuple[str, int, str, str | None]] = []
        start = 0
        end = shard.offset + shard.count
        for group in range(parquet.num_row_groups):
            n = parquet.metadata.row_group(group).num_rows
            if start < end and start + n > shard.offset:
                table = parquet.read_row_group(group, use_threads=False)
                lo, hi = max(shard.offset - start, 0), min(end - start, n)
                rows += zip(*(table.column(c).to_pylist()[lo:hi] for c in MANIFEST_COLUMNS), strict=True)
            start += n
    if len(rows) != shard.count:
        raise RuntimeError(f"shard {shard.index}: manifest has {len(rows)} rows in its range, expected {shard.count}")
    return rows
