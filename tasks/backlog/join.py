"""The join: a request file's index + its `.out` lines → the day's rows, in the committed format.

Batch Transform writes `<file>.out` only when every record of the file was processed, one line per record in input
order: `{"key": ..., "SageMakerOutput": <the chat.completion body>}` (JoinSource Input + OutputFilter). The join is
strict: a non-empty `.out` with no line of that shape fails loudly (OutputShapeError), and lines that cannot be
parsed are counted and named in the reason of the images left without an answer. Each answer
goes through the endpoint client's own parser, and each row is built by the nightly row builder, so the statuses and
reasons are the ones classify_images writes. An image without an answer — its file has no `.out` (the job failed
on it, or never ran), or its line is missing — becomes a `failed` row that says why; a later run retries it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from tasks.backlog.plan import OUTPUT_SUFFIX, REQUEST_SUFFIX, RequestFile, TransformJob, records_job
from tasks.backlog.requests import read_index
from tasks.common import storage
from tasks.model.calibration import Calibration
from tasks.model.taxonomy import Taxonomy
from tasks.nightly import predictions
from tasks.nightly.classification import PartitionJob, ShardResult, result_row
from tasks.nightly.predictions import RowStats
from tasks.serving.client import ClassificationResult, parse_response

JOINED_SHAPE = '{"key": <image key>, "SageMakerOutput": <the answer>}'
SHAPE_SOURCE = (
    "JoinSource=Input with OutputFilter $['key','SageMakerOutput']: for JSON Lines SageMaker adds the answer to the "
    "input object under SageMakerOutput, and the joined result must be a key-value object (AWS API reference, "
    "DataProcessing.JoinSource; developer guide, batch-transform-data-processing)"
)
MAX_NAMED = 3  # unparsable lines named in a reason; the count covers the rest


class OutputShapeError(AirflowFailException):
    """A `.out` whose lines are not the documented joined shape: no retry, the file will not change."""


@dataclass
class ParsedOutput:
    """What one `.out` file holds: the answer body per key, and every non-blank line that could not be read."""

    answers: dict[str, bytes] = field(default_factory=dict)
    unparsed: list[str] = field(default_factory=list)  # "line N: why"
    lines: int = 0  # non-blank lines

    def summary(self) -> str:
        named = "; ".join(self.unparsed[:MAX_NAMED])
        more = f"; and {len(self.unparsed) - MAX_NAMED} more" if len(self.unparsed) > MAX_NAMED else ""
        return f"{len(self.unparsed)} of its {self.lines} line(s) could not be parsed ({named}{more})"


def parse_output(path: Any) -> ParsedOutput:
    """Every line of a `.out` file, strictly. Blank lines are skipped (AssembleWith=Line after a body that ends in a
    newline); any other line that is not a JSON object with a string `key` and a `SageMakerOutput` is counted and
    named. A non-empty file with no parsable line at all means the output shape is not the one this join was built
    for (see SHAPE_SOURCE): that fails loudly instead of turning every image into a `failed` row."""
    parsed = ParsedOutput()
    first_seen: dict[str, int] = {}
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            parsed.lines += 1
            line = _parse_line(raw)
            if isinstance(line, str):
                parsed.unparsed.append(f"line {number}: {line}")
            elif line[0] in first_seen:
                parsed.unparsed.append(f"line {number}: key {line[0]!r} again (first on line {first_seen[line[0]]})")
            else:
                first_seen[line[0]] = number
                parsed.answers[line[0]] = line[1]
    if parsed.lines and not parsed.answers:
        raise OutputShapeError(
            f"{path}: none of its {parsed.lines} line(s) has the joined shape {JOINED_SHAPE} "
            f"({'; '.join(parsed.unparsed[:MAX_NAMED])}). Expected from {SHAPE_SOURCE}. Nothing was committed for "
            "its images; check the job's DataProcessing settings and one line of the file before rerunning."
        )
    return parsed


def _parse_line(raw: bytes) -> tuple[str, bytes] | str:
    """(key, answer body) of one joined line, or why it is not one."""
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        return f"not JSON ({exc}): {_snippet(raw)}"
    if not isinstance(doc, dict):
        return f"a JSON {type(doc).__name__}, not an object: {_snippet(raw)}"
    if not isinstance(doc.get("key"), str):
        return f"no string 'key' (fields: {sorted(doc)[:5]})"
    if "SageMakerOutput" not in doc:
        return f"no 'SageMakerOutput' (fields: {sorted(doc)[:5]})"
    answer = doc["SageMakerOutput"]
    return doc["key"], answer.encode() if isinstance(answer, str) else json.dumps(answer).encode()


def _snippet(raw: bytes, limit: int = 80) -> str:
    text = raw.decode("utf-8", errors="replace").strip()
    return text if len(text) <= limit else text[:limit] + "..."


def read_answers(output: Any, request_name: str, no_output_reason: str) -> tuple[dict[str, bytes], str]:
    """The answers of one request file and the reason an image without one gets: the job wrote no `.out`, or the
    `.out` has no line for it (naming the lines that could not be parsed, if any)."""
    if not output.exists():
        return {}, no_output_reason
    parsed = parse_output(output)
    if parsed.unparsed:
        return parsed.answers, f"no answer: {request_name}{OUTPUT_SUFFIX}: {parsed.summary()}"
    return parsed.answers, f"no answer: {request_name}{OUTPUT_SUFFIX} has no line for this image"


def answer_result(
    key: str, body: bytes, taxonomy: Taxonomy, calibration: Calibration | None = None
) -> ClassificationResult:
    """One joined answer through the endpoint client's own parser (the nightly path's statuses, reasons and
    calibrated confidence)."""
    return replace(parse_response(key, body, taxonomy, calibration), attempts=1)


def missing_reason(job: TransformJob, request: RequestFile, outcome: dict[str, Any] | None) -> str:
    if outcome is None:
        return f"no answer: transform job {job.name} never ran (its request files: {job.input_uri})"
    return (
        f"no answer: batch transform wrote no {request.name}{OUTPUT_SUFFIX} (job {job.name} "
        f"{outcome['status']}: {outcome.get('failure_reason') or 'no reason given'})"
    )


def record_answers(
    day: PartitionJob, job: TransformJob, request: RequestFile, no_output: str, records_outcome: dict[str, Any] | None
) -> tuple[dict[str, bytes], str]:
    """A file without a `.out`: the answers its records got alone in the job's follow-up (tasks.backlog.records),
    and the reason a record without one gets (the job's reason, then the follow-up's)."""
    records = records_job(job)
    inputs = storage.storage_path(records.input_uri, day.conn_id)
    inputs.fs.invalidate_cache(inputs.path)
    stem = request.name.removesuffix(REQUEST_SUFFIX) + ".r"
    sent = sorted(p.name for p in inputs.iterdir() if p.name.startswith(stem)) if inputs.exists() else []
    if not sent:
        return {}, no_output
    outputs = storage.storage_path(records.output_uri, day.conn_id)
    outputs.fs.invalidate_cache(outputs.path)
    answers: dict[str, bytes] = {}
    unparsed: list[str] = []
    for name in sent:
        output = outputs / f"{name}{OUTPUT_SUFFIX}"
        if output.exists():
            parsed = parse_output(output)
            answers.update(parsed.answers)
            unparsed += [f"{name}{OUTPUT_SUFFIX} {problem}" for problem in parsed.unparsed]
    if records_outcome is None:
        then = f"sent again alone in follow-up job {records.name}, which never ran"
    else:
        why = records_outcome.get("failure_reason") or "no reason given"
        then = f"sent again alone in follow-up job {records.name}: no answer ({records_outcome['status']}: {why})"
    if unparsed:
        then += f"; {len(unparsed)} line(s) could not be parsed ({'; '.join(unparsed[:MAX_NAMED])})"
    return answers, f"{no_output}; {then}"


def join_file(
    day: PartitionJob,
    job: TransformJob,
    request: RequestFile,
    outcome: dict[str, Any] | None,
    taxonomy: Taxonomy,
    records_outcome: dict[str, Any] | None = None,
) -> ShardResult:
    """Write the rows of one request file as the day's shard file (same name and order as the nightly shard)."""
    import pyarrow as pa

    index = read_index(storage.storage_path(job.index_uri(request), day.conn_id))
    outputs = storage.storage_path(job.output_uri, day.conn_id)
    outputs.fs.invalidate_cache(outputs.path)  # another system wrote them: a listing cached earlier may predate them
    output = outputs / f"{request.name}{OUTPUT_SUFFIX}"
    if output.exists():
        answers, missing = read_answers(output, request.name, "")
    else:
        answers, missing = record_answers(day, job, request, missing_reason(job, request, outcome), records_outcome)
    rows = []
    for entry in index:
        key = entry["key"]
        if entry["rejected"] is not None:
            result = ClassificationResult(key, "rejected", error=entry["rejected"])
        elif key in answers:
            result = answer_result(key, answers.pop(key), taxonomy, day.record and day.record.calibration)
        else:
            result = ClassificationResult(key, "failed", error=missing)
        rows.append(
            result_row(day, key, entry["source_size"], entry["source_version"], entry["content_sha256"], result)
        )
    if answers:
        raise RuntimeError(
            f"{output}: {len(answers)} answer(s) for keys that {request.name} never sent, e.g. {sorted(answers)[:3]}"
        )
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
