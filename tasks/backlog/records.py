"""One bad record costs one image: the follow-up job of a transform job that ended Failed.

Batch Transform's unit of output is the input file: with SplitType Line + SingleRecord, a record the container
rejects (a 4xx after InvocationsMaxRetries) leaves its whole file without a `.out` (Batch Transform writes none
rather than break the input order) and ends the job Failed, while it still processes the job's other files (AWS
developer guide, "Use batch transform to run inference", on failed input files). So a bad record would cost all the
images of its file (500 by default).

After the large jobs, `record_requests` looks at each one: if it ended Failed, every record of each of its files
that has no `.out` is written to a request file of its own (`plan.record_file_name`) under `<job>/records/input/`,
and one follow-up job per failed job (`plan.records_job`: a deterministic name, the job's own request otherwise:
same model and settings) sends them again. There each file is one record, so a record the container rejects again
fails only itself; the join (`join.join_file`) reads a failed file's answers from the follow-up's `.out` files, and
only the records that failed on their own become `failed` rows, with both jobs' reasons.

A job that failed for a reason that is not a record (capacity, an internal error) would fail its follow-up the same
way, one more start-up for nothing; so a Failed job that answered no file at all gets a follow-up only for up to
MAX_BLIND_RECORDS records (a small job whose one file had one bad record), never for a whole large job (writing a
million one-record files would take the worker hours). Its rows then say why, and a new run retries them. A Stopped
job is a decision, not a bad record: no follow-up.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from typing import Any

from tasks.backlog.plan import OUTPUT_SUFFIX, RECORDS_DIR, REQUEST_SUFFIX, record_file_name, records_job_name
from tasks.common import storage

log = logging.getLogger(__name__)
DOC = """For each transform job that ended Failed: writes every record of its files that got no `.out` to a request
file of its own and returns the follow-up job's CreateTransformJob request (same model and settings). Runs whatever
happened upstream; nothing to do (skipped downstream) when every job completed."""
MAX_BLIND_RECORDS = 5_000  # a Failed job that answered no file at all: re-send at most this many records
TRANSFORM_DOC = """The follow-up job of a Failed transform job: one record per request file, so a record the model
rejects fails only itself. **Failed**: those records are `failed` rows with the reason (commit_day); the rest are
joined as usual. A retry attaches to the same job."""


def _records_uri(uri: str, leaf: str) -> str:
    """`<job>/records/<leaf>/` for the job's `<job>/input/` or `<job>/output/` (keeps the URI's form)."""
    return f"{uri.rstrip('/').rsplit('/', 1)[0]}/{RECORDS_DIR}/{leaf}/"


def record_requests(
    requests: list[dict[str, Any]] | None, conn_id: str, describe: Callable[[dict[str, Any]], dict[str, Any] | None]
) -> list[dict[str, Any]]:
    """The follow-up requests of the jobs that ended Failed (`describe(request)`: the job's description, or None
    when it was never created). Deterministic: a retry rewrites the same files for the same job names."""
    out = []
    for request in requests or []:
        description = describe(request)
        if description is None or description["TransformJobStatus"] != "Failed":
            continue
        unanswered, answered = failed_files(request, conn_id)
        records = sum(len(lines) for _, lines in unanswered)
        if not unanswered:
            log.info("job %s ended Failed with every file answered: no follow-up", request["TransformJobName"])
            continue
        if not answered and records > MAX_BLIND_RECORDS:
            log.warning(
                "job %s ended Failed without answering any file (%s): that is the job, not a record; no "
                "follow-up for its %d records (their rows say why; a new run retries them)",
                request["TransformJobName"],
                description.get("FailureReason"),
                records,
            )
            continue
        written = write_record_files(request, conn_id, unanswered)
        config = copy.deepcopy(request)
        config["TransformJobName"] = records_job_name(request["TransformJobName"])
        source = config["TransformInput"]["DataSource"]["S3DataSource"]
        source["S3Uri"] = _records_uri(request["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"], "input")
        config["TransformOutput"]["S3OutputPath"] = _records_uri(request["TransformOutput"]["S3OutputPath"], "output")
        reason = description.get("FailureReason") or "no reason given"
        log.warning(
            "job %s ended Failed (%s): %d record(s) of its unanswered files go again, one per file, in %s",
            request["TransformJobName"],
            reason,
            written,
            config["TransformJobName"],
        )
        out.append(config)
    return out


def failed_files(request: dict[str, Any], conn_id: str) -> tuple[list[tuple[str, list[bytes]]], int]:
    """(name and records of each request file without a `.out`, how many files have one)."""
    source = storage.storage_path(request["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"], conn_id)
    outputs = storage.storage_path(request["TransformOutput"]["S3OutputPath"], conn_id)
    outputs.fs.invalidate_cache(outputs.path)  # SageMaker wrote them
    unanswered, answered = [], 0
    for path in sorted(p for p in source.iterdir() if p.name.endswith(REQUEST_SUFFIX)) if source.exists() else []:
        if (outputs / f"{path.name}{OUTPUT_SUFFIX}").exists():
            answered += 1
        else:
            unanswered.append((path.name, [line for line in path.read_bytes().splitlines() if line.strip()]))
    return unanswered, answered


def write_record_files(request: dict[str, Any], conn_id: str, unanswered: list[tuple[str, list[bytes]]]) -> int:
    """Each record of each unanswered file in a request file of its own; how many were written."""
    target_uri = _records_uri(request["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"], "input")
    target = storage.storage_path(target_uri, conn_id)
    for name, records in unanswered:
        for number, line in enumerate(records):
            storage.write_bytes_atomic(target / record_file_name(name, number), line + b"\n")
    return sum(len(records) for _, records in unanswered)
