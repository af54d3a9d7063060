"""Classify a partition: the job shared by its shards, one shard → one Parquet file, and the checks before commit.

Every listed image ends in exactly one row: a shard writes one row per manifest entry (unreadable files become
`rejected` rows, never an exception), and `collect_shards` refuses to go on unless shard rows + carried rows equal
the images listed. Rows follow the manifest's key order, so a rerun writes the same files.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from airflow.sdk import ObjectStoragePath
from airflow.sdk.exceptions import AirflowFailException

from tasks.common import leases, storage
from tasks.common.progress import Progress
from tasks.common.settings import Settings
from tasks.model.images import MAX_FILE_BYTES
from tasks.nightly import partitions, predictions
from tasks.nightly.partitions import PartitionPlan, Shard
from tasks.nightly.predictions import RowStats
from tasks.records.endpoint import EndpointRecord
from tasks.serving.client import DEFAULT_MAX_CONSECUTIVE_FAILURES, ClassificationResult, EndpointClient

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PartitionJob:
    """What every shard of one run shares; small, so it travels through XCom once per mapped task."""

    dt: str
    incoming_uri: str
    partition_uri: str
    run_token: str
    record: EndpointRecord | None  # None: no endpoint deployed, nothing to classify
    concurrency: int
    conn_id: str
    client_options: dict[str, Any] = field(default_factory=dict)  # EndpointSpec overrides: timeout_s, max_retries
    max_consecutive_failures: int = DEFAULT_MAX_CONSECUTIVE_FAILURES  # the client's circuit breaker

    @property
    def run_dir(self) -> ObjectStoragePath:
        return predictions.run_dir(storage.storage_path(self.partition_uri, self.conn_id), self.run_token)

    @property
    def model_version(self) -> str:
        return self.record.model_version if self.record else ""

    @property
    def endpoint_name(self) -> str:
        return self.record.endpoint_name if self.record else ""

    def client(self) -> EndpointClient:
        from tasks.model.taxonomy import load_taxonomy
        from tasks.serving import deployment

        assert self.record is not None, "a job without an endpoint has no shards"
        spec = replace(deployment.endpoint_spec(self.record, self.conn_id), **self.client_options)
        taxonomy = load_taxonomy(self.record.taxonomy)
        policy = deployment.resize_policy(self.record)
        return EndpointClient(
            spec,
            taxonomy,
            policy=policy,
            prompt=self.record.prompt,
            calibration=self.record.calibration,
            max_consecutive_failures=self.max_consecutive_failures,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"record": self.record.to_dict() if self.record else None}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> PartitionJob:
        record = doc["record"] and EndpointRecord.from_dict(doc["record"], "the job's endpoint record (XCom)")
        return cls(**doc | {"record": record})


def deployed_endpoint(
    settings: Settings, *, name: str | None = None, backend: str | None = None, required: bool = True
) -> EndpointRecord | None:
    """The endpoint record to classify with (None when none is deployed and it is not `required`).

    `name`/`backend`, when set, pin the run to that endpoint: it refuses to classify through another one (e.g. a
    backfill budgeted for one endpoint, after a redeploy). A required endpoint is brought back first where its
    backend can (a local server that died is restarted on its recorded port).
    """
    from tasks.serving import deployment
    from tasks.serving.steps import serving_backend

    record = deployment.current_endpoint(deployment.serving_root(settings))
    if record is None:
        if not required:
            return None
        raise AirflowFailException(
            f"no endpoint recorded in {deployment.serving_root(settings)}/{deployment.RECORD_NAME}: "
            "run deploy_endpoint first"
        )
    for param, wanted in (("endpoint_name", name), ("backend", backend)):
        if wanted and getattr(record, param) != wanted:
            raise AirflowFailException(
                f"the deployed endpoint has {param}={getattr(record, param)!r}; this run: {wanted!r}"
            )
    if required:
        serving_backend(settings).ensure_serving(record)
    return record


@dataclass(frozen=True)
class ShardResult:
    index: int
    path: str  # relative to the partition
    rows: int
    stats: dict[str, Any]  # RowStats
    started: float  # epoch seconds: busy time is the union of the shards' intervals
    finished: float


def read_listed(incoming: ObjectStoragePath, key: str, problem: str | None) -> tuple[bytes | None, str]:
    """(the file's bytes, "") for a listed image, else (None, the rejection reason): a symlink, special file or
    unsafe name (the listing's `problem`) is never read; a file swapped for a link, grown past the size cap or gone
    since the listing is refused, never a crash."""
    if problem:
        return None, problem
    try:
        return storage.read_child_capped(incoming, key, MAX_FILE_BYTES), ""
    except storage.Refused as exc:
        return None, str(exc)
    except OSError as exc:
        return None, f"unreadable: {type(exc).__name__}: {exc}"


FLUSH_ROWS = 25  # a shard writes the answers it got at least every FLUSH_ROWS answers ...
FLUSH_S = 5.0  # ... or FLUSH_S seconds: a killed shard loses at most that much endpoint work
RESUMABLE = ("ok", "invalid")  # answers the endpoint gave (paid for): a retry of the same shard keeps them


def classify_shard(job: PartitionJob, shard: Shard) -> ShardResult:
    """Classify the shard's images with bounded concurrency and write its rows as one Parquet file.

    Answers are flushed as they arrive (AnswerLog), so a retry after a kill sends only the images without an
    answer, and a new run's plan carries the final ones (partitions.plan_partition)."""
    import pyarrow as pa

    entries = partitions.read_shard(shard, job.conn_id)
    incoming = storage.storage_path(job.incoming_uri, job.conn_id)
    name = f"shard-{shard.index:05d}.parquet"
    answers = AnswerLog(job, job.run_dir / f"shard-{shard.index:05d}{partitions.ANSWERS_SUFFIX}")
    kept = answers.resumed(entries, job.run_dir / name)
    digests: dict[str, str] = {}
    unreadable: dict[str, str] = {}

    def images() -> Iterator[tuple[str, bytes]]:
        for key, _, _, problem in entries:
            if key in kept:
                continue
            data, reason = read_listed(incoming, key, problem)
            if data is None:
                unreadable[key] = reason
                continue
            digests[key] = hashlib.sha256(data).hexdigest()
            yield key, data

    if kept:
        log.info(
            "shard %d: %d answers kept from an earlier try; %d images to go",
            shard.index,
            len(kept),
            len(entries) - len(kept),
        )
    progress = Progress(len(entries) - len(kept), f"dt={job.dt} shard {shard.index}", log=log)
    sizes = {key: (size, version) for key, size, version, _ in entries}
    started = time.time()

    def row_of(result: ClassificationResult) -> dict[str, Any]:
        return result_row(job, result.key, *sizes[result.key], digests.get(result.key), result)

    results = asyncio.run(_classify_all(job.client(), images(), job.concurrency, progress, answers, row_of))
    finished = time.time()
    progress.finish()
    by_key = {result.key: result for result in results}
    if len(by_key) + len(unreadable) + len(kept) != len(entries):
        raise RuntimeError(
            f"shard {shard.index}: {len(by_key)} results + {len(unreadable)} unreadable + "
            f"{len(kept)} kept != {len(entries)} images"
        )
    fresh = {key: row_of(by_key.get(key) or _rejected(key, unreadable)) for key in sizes if key not in kept}
    rows = [kept.get(key) or fresh[key] for key, _, _, _ in entries]
    table = pa.Table.from_pylist(rows, schema=predictions.row_schema())
    predictions.write_table(job.run_dir / name, table)
    answers.discard()  # its rows are in the shard's file now
    return ShardResult(
        index=shard.index,
        path=f"{job.run_dir.name}/{name}",
        rows=table.num_rows,
        stats=RowStats().add(table).to_dict(),
        started=started,
        finished=finished,
    )


class AnswerLog:
    """A shard's answers on storage as they arrive: one small key-sorted Parquet part per flush (appending is not
    an S3 operation), each written atomically, so a kill loses at most the last FLUSH_S seconds."""

    def __init__(self, job: PartitionJob, folder: ObjectStoragePath) -> None:
        self.job, self.folder = job, folder
        self.pending: list[dict[str, Any]] = []

    def add(self, row: dict[str, Any]) -> None:
        self.pending.append(row)

    async def flush(self) -> None:
        rows, self.pending = self.pending, []
        if rows:
            await asyncio.to_thread(self._write, sorted(rows, key=lambda row: row["key"]))

    def _write(self, rows: list[dict[str, Any]]) -> None:
        import uuid

        import pyarrow as pa

        part = self.folder / f"part-{time.time_ns()}-{uuid.uuid4().hex[:8]}.parquet"
        predictions.write_table(part, pa.Table.from_pylist(rows, schema=predictions.row_schema()))

    def resumed(self, entries: list[tuple[str, int, str, str | None]], shard_file: ObjectStoragePath) -> dict:
        """{key: row} of answers an earlier try of this shard got (its parts, or its finished file) for the same
        file and model version."""
        wanted = {(key, size, version) for key, size, version, problem in entries if problem is None}
        sources = [shard_file] if shard_file.exists() else []
        sources += sorted(self.folder.iterdir(), key=lambda p: p.name) if self.folder.exists() else []
        kept: dict[str, dict[str, Any]] = {}
        for source in sources:
            for row in predictions.read_table(source).to_pylist():
                if (
                    row["status"] in RESUMABLE
                    and row["model_version"] == self.job.model_version
                    and (row["key"], row["source_size"], row["source_version"]) in wanted
                ):
                    kept[row["key"]] = row
        return kept

    def discard(self) -> None:
        storage.remove_tree(self.folder, owner=self.job.run_dir)


async def _classify_all(
    client: EndpointClient,
    images: Iterator[tuple[str, bytes]],
    concurrency: int,
    progress: Progress,
    answers: AnswerLog,
    row_of: Callable[[ClassificationResult], dict[str, Any]],
) -> list[ClassificationResult]:
    """Every result; each one's row goes to `answers`, flushed every FLUSH_ROWS results or FLUSH_S seconds and once
    more on the way out (a circuit breaker's error keeps what was answered before it)."""

    async def flush_periodically() -> None:
        while True:
            await asyncio.sleep(FLUSH_S)
            await answers.flush()

    def advance(result: ClassificationResult) -> None:
        progress.advance(outcome=result.status)

    timer = asyncio.create_task(flush_periodically())
    results = []
    try:
        async for result in client.classify_many(images, concurrency=concurrency, on_progress=advance):
            results.append(result)
            answers.add(row_of(result))
            if len(answers.pending) >= FLUSH_ROWS:
                await answers.flush()
    finally:
        timer.cancel()
        await asyncio.gather(timer, return_exceptions=True)
        await answers.flush()
    return results


def _rejected(key: str, unreadable: dict[str, str]) -> ClassificationResult:
    return ClassificationResult(key, "rejected", error=unreadable[key])


def result_row(
    job: PartitionJob, key: str, size: int, version: str, digest: str | None, r: ClassificationResult
) -> dict:
    """The committed row of one image (tasks.nightly.predictions.ROW_COLUMNS), whichever path classified it."""
    return {
        "key": key,
        "content_sha256": digest,
        "source_size": size,
        "source_version": version,
        "status": r.status,
        "label": r.label,
        "raw_answer": r.raw_answer,
        "reason": r.error,
        "prompt_tokens": r.prompt_tokens,
        "completion_tokens": r.completion_tokens,
        "latency_s": r.latency_s,
        "attempts": r.attempts,
        "confidence": r.confidence,
        "runner_up": r.runner_up,
        "margin": r.margin,
        "model_version": job.model_version,
        "endpoint": job.endpoint_name,
    }


@dataclass(frozen=True)
class StagedPartition:
    """A fully classified run, verified but not yet visible: what the gate judges and `publish` commits."""

    files: list[dict[str, Any]]  # {"path", "rows"} relative to the partition
    stats: dict[str, Any]  # RowStats of every row
    busy_seconds: float  # endpoint time of this run's shards (their union) + the carried rows' share
    classified: int  # rows made by this run (the rest were carried)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def collect_shards(plan: PartitionPlan, results: list[ShardResult]) -> StagedPartition:
    """Check that every image is accounted for exactly once, and sum up the rows' statistics.

    Results of another run token are dropped: a cleared run (`backfill --reprocess-behavior completed`) that now
    maps fewer shards still returns the old shards' XComs (Airflow 3.3 keeps them for removed mapped tasks).
    """
    prefix = f"{predictions.RUN_PREFIX}{plan.run_token}/"
    results = sorted((r for r in results if r.path.startswith(prefix)), key=lambda r: r.index)
    expected = [shard.index for shard in plan.shards]
    if [r.index for r in results] != expected:
        raise RuntimeError(f"expected results of shards {expected}, got {[r.index for r in results]}")
    for shard, result in zip(plan.shards, results, strict=True):
        if result.rows != shard.count:
            raise RuntimeError(f"shard {shard.index} wrote {result.rows} rows for {shard.count} images")
    stats = RowStats.from_dict(plan.carried_stats)
    for result in results:
        stats.merge(RowStats.from_dict(result.stats))
    if stats.rows != plan.images:
        raise RuntimeError(f"{stats.rows} rows for {plan.images} images listed in dt={plan.dt}: accounting is off")
    carried = [{"path": prefix + partitions.CARRIED_NAME, "rows": plan.carried}]
    return StagedPartition(
        files=(carried if plan.carried else []) + [{"path": r.path, "rows": r.rows} for r in results],
        stats=stats.to_dict(),
        busy_seconds=union_seconds([(r.started, r.finished) for r in results]) + plan.carried_busy_seconds,
        classified=sum(r.rows for r in results),
    )


def union_seconds(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of [start, end] intervals: shards running side by side share the endpoint's time."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def publish(
    job: PartitionJob,
    plan: PartitionPlan,
    staged: StagedPartition,
    quality: dict[str, Any],
    *,
    owner: dict[str, Any] | None = None,
    stale: leases.Judge = leases.expired,
) -> dict:
    """Commit the staged run as the partition's content (tasks.nightly.predictions.publish) with its summary;
    `owner` and `stale` are the lease's (tasks.nightly.steps.lease_judge)."""
    summary = {
        "dt": plan.dt,
        "model_version": job.model_version,
        "endpoint": job.endpoint_name,
        "incoming": job.incoming_uri,
        "listed": plan.listed,
        "ignored": plan.ignored,
        "rows": staged.stats["rows"],
        "carried": plan.carried,
        "classified": staged.classified,
        "busy_seconds": staged.busy_seconds,
        "stats": staged.stats,
        "quality": quality,
    }
    partition = storage.storage_path(job.partition_uri, job.conn_id)
    return predictions.publish(partition, job.run_token, staged.files, summary, owner=owner, stale=stale)
