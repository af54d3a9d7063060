"""The join: a request file's index + its `.out` lines → the day's rows, in the committed format.

Batch Transform writes `<file>.out` only when every record of the file was processed, one line per record in input
order: `{"key": ..., "SageMakerOutput": <the chat.completion body>}` (JoinSource Input + OutputFilter). Each answer
goes through the endpoint client's own parser, and each row is built by the nightly row builder, so the statuses and
reasons are the ones classify_images writes. An image without an answer — its file has no `.out` (the job failed
on it, or never ran), or its line is missing — becomes a `failed` row that says why; a later run retries it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from tasks.backlog.plan import OUTPUT_SUFFIX, RequestFile, TransformJob
from tasks.backlog.requests import read_index
from tasks.common import storage
from tasks.model.taxonomy import Taxonomy
from tasks.nightly import predictions
from tasks.nightly.classification import PartitionJob, ShardResult, result_row
from tasks.nightly.predictions import RowStats
from tasks.serving.client import ClassificationResult, parse_response


def output_lines(path: Any) -> Iterator[tuple[str, bytes]]:
    """(key, answer body) per joined line; blank lines (AssembleWith=Line after a body ending in a newline) and
    lines without a key are skipped — their images then have no answer and become `failed` rows."""
    with path.open("rb") as f:
        for raw in f:
            if not raw.strip():
                continue
            try:
                doc = json.loads(raw)
            except ValueError:
                continue
            if not isinstance(doc, dict) or not isinstance(doc.get("key"), str):
                continue
            answer = doc.get("SageMakerOutput")
            yield doc["key"], answer.encode() if isinstance(answer, str) else json.dumps(answer).encode()


def missing_reason(job: TransformJob, request: RequestFile, outcome: dict[str, Any] | None) -> str:
    if outcome is None:
        return f"no answer: transform job {job.name} never ran (its request files: {job.input_uri})"
    return (f"no answer: batch transform wrote no {request.name}{OUTPUT_SUFFIX} (job {job.name} "
            f"{outcome['status']}: {outcome.get('failure_reason') or 'no reason given'})")  # fmt: skip


def join_file(
    day: PartitionJob,
    job: TransformJob,
    request: RequestFile,
    outcome: dict[str, Any] | None,
    taxonomy: Taxonomy,
) -> ShardResult:
    """Write the rows of one request file as the day's shard file (same name and order as the nightly shard)."""
    import pyarrow as pa

    index = read_index(storage.storage_path(job.index_uri(request), day.conn_id))
    outputs = storage.storage_path(job.output_uri, day.conn_id)
    outputs.fs.invalidate_cache(outputs.path)  # another system wrote them: a listing cached earlier may predate them
    output = outputs / f"{request.name}{OUTPUT_SUFFIX}"
    answers = dict(output_lines(output)) if output.exists() else {}
    missing = (f"no answer: {request.name}{OUTPUT_SUFFIX} has no line for this image"
               if output.exists() else missing_reason(job, request, outcome))  # fmt: skip
    rows = []
    for entry in index:
        key = entry["key"]
        if entry["rejected"] is not None:
            result = ClassificationResult(key, "rejected", error=entry["rejected"])
        elif key in answers:
            result = ClassificationResult(**{**parse_response(key, answers.pop(key), taxonomy).__dict__, "attempts": 1})
        else:
            result = ClassificationResult(key, "failed", error=missing)
        rows.append(result_row(day, key, entry["source_size"], entry["source_version"], entry["content_sha256"],
                               result))  # fmt: skip
    if answers:
        raise RuntimeError(f"{output}: {len(answers)} answer(s) for keys that {request.name} never sent, e.g. "
                           f"{sorted(answers)[:3]}")  # fmt: skip
    table = pa.Table.from_pylist(rows, schema=predictions.row_schema())
    shard = request.shard["index"]
    name = f"shard-{shard:05d}.parquet"
    predictions.write_table(day.run_dir / name, table)
    return ShardResult(
        index=shard,
        path=f"{day.run_dir.name}/{name}",
        rows=table.num_rows,
        stats=RowStats().add(table).to_dict(),
        started=0.0,  # busy time is the day's share of the jobs' billed time, not shard intervals
        finished=0.0,
    )


def billed_share(dt: str, jobs: list[TransformJob], outcomes: dict[str, dict[str, Any] | None]) -> float:
    """The day's share of the jobs' billed wall-clock seconds, split by images (per instance: the ledger multiplies
    by the instance count)."""
    share = 0.0
    for job in jobs:
        outcome = outcomes.get(job.name)
        day_images = sum(f.images for f in job.files if f.dt == dt)
        if outcome and day_images and job.images:
            share += float(outcome["seconds"]) * day_images / job.images
    return share


def job_outcome(description: dict[str, Any] | None) -> dict[str, Any] | None:
    """The facts of a DescribeTransformJob answer (or the local runner's) that the join and the ledger need: status,
    reason, and the seconds each instance was billed (TransformStartTime to TransformEndTime)."""
    if description is None:
        return None
    started = _time(description.get("TransformStartTime"))
    ended = _time(description.get("TransformEndTime"))
    return {
        "name": description["TransformJobName"],
        "status": description["TransformJobStatus"],
        "failure_reason": description.get("FailureReason") or "",
        "seconds": (ended - started).total_seconds() if started and ended else 0.0,
        "instance_count": int(description["TransformResources"]["InstanceCount"]),
        "instance_type": description["TransformResources"]["InstanceType"],
    }


def _time(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))
