"""The canary: a few records through a small transform job, read by the join, before any large job is started.

The large jobs of a backlog run can cost hundreds of instance-hours; what breaks them first (a model that does not
load, an answer the join cannot read, a DataProcessing setting that joins into another shape) breaks a job of three
records just as well. So `transform` first runs one small job on the first `CANARY_RECORDS` records of the first
request file, with the first job's own CreateTransformJob request (same model, same payload, concurrency, client
config, content types, split, assemble and DataProcessing), and reads its `.out` with the join's own parser
(`join.parse_output`, `join.answer_result`). It differs only in its name, its prefixes and InstanceCount 1: its one
file goes to one instance (Batch Transform hands whole files to instances), so more would bill start-ups for
nothing. It fails the run, without retries and with the reason, when the job ends Failed/Stopped (SageMaker's
FailureReason), when it completed but wrote no `.out`, when a line cannot be parsed, or when an answer is not a
chat completion the client can read; the large jobs are then never created.

Its name is a pure function of the first job's name (itself a function of the run and the images it classifies),
so a retry or rerun of the same run attaches to the same canary and never bills a second one.
"""

from __future__ import annotations

import copy
import hashlib
import logging
from collections import Counter
from typing import Any

from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from tasks.backlog import join
from tasks.backlog.plan import OUTPUT_SUFFIX, REQUEST_SUFFIX
from tasks.common import storage
from tasks.common.aws_names import sagemaker_name, slug
from tasks.model.taxonomy import Taxonomy

log = logging.getLogger(__name__)
CANARY_RECORDS = 3
CANARY_DIR = "canary"  # beside the first job's input/ and output/: `<first job>/canary/{input,output}/`
DOC = f"""Canary: the first {CANARY_RECORDS} records of the first request file through one small transform job
(the first job's request: same model and settings, one instance), its `.out` read by the join. Fails without
retries, before any large job is created, with SageMaker's FailureReason or the line that could not be parsed. A
retry attaches to the same canary job."""
REQUEST_DOC = """Writes the canary's request file (the first records of the first request file) and returns its
CreateTransformJob request; skipped when there is nothing to transform."""


def canary_name(first_job: str, records: int = CANARY_RECORDS) -> str:
    digest = hashlib.sha256(f"canary/{first_job}/{records}".encode()).hexdigest()
    # `backlog-` first: the Airflow role may create transform jobs named `backlog-*` only (airflow-role-policy.json)
    return sagemaker_name(slug(f"backlog-canary-{first_job.removeprefix('backlog-')}"), digest)


def _sibling(uri: str, leaf: str) -> str:
    """`<prefix>/canary/<leaf>/` for a job's `<prefix>/input/` or `<prefix>/output/` (keeps the URI's form)."""
    return f"{uri.rstrip('/').rsplit('/', 1)[0]}/{CANARY_DIR}/{leaf}/"


def canary_config(first: dict[str, Any], records: int = CANARY_RECORDS) -> dict[str, Any]:
    """The canary's CreateTransformJob request: the first job's, renamed, on `<prefix>/canary/{input,output}/`, on one
    instance (its single file goes to one instance; more would bill idle start-ups)."""
    config = copy.deepcopy(first)
    config["TransformJobName"] = canary_name(first["TransformJobName"], records)
    input_uri = _sibling(first["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"], "input")
    config["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"] = input_uri
    config["TransformOutput"]["S3OutputPath"] = _sibling(first["TransformOutput"]["S3OutputPath"], "output")
    config["TransformResources"]["InstanceCount"] = 1
    return config


def canary_request(requests: list[dict[str, Any]], conn_id: str, records: int = CANARY_RECORDS) -> dict[str, Any]:
    """Write the canary's request file and return its CreateTransformJob request (a copy of the first job's).

    Deterministic: the first records of the first request file (sorted as Batch Transform lists them) under the
    same file name, so a retry rewrites the same bytes for the same job name."""
    if not requests:
        raise AirflowSkipException("no transform job has records to send: no canary")
    first = requests[0]
    source = storage.storage_path(first["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"], conn_id)
    files = sorted(p for p in source.iterdir() if p.name.endswith(REQUEST_SUFFIX)) if source.exists() else []
    if not files:
        raise AirflowFailException(f"job {first['TransformJobName']}: no request file under {source}")
    lines = []
    with files[0].open("rb") as f:
        for raw in f:
            if raw.strip():
                lines.append(raw if raw.endswith(b"\n") else raw + b"\n")
            if len(lines) == records:
                break
    config = canary_config(first, records)
    input_uri = config["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"]
    storage.write_bytes_atomic(storage.storage_path(input_uri, conn_id) / files[0].name, b"".join(lines))
    log.info(
        "canary %s: %d record(s) of %s (job %s)",
        config["TransformJobName"],
        len(lines),
        files[0].name,
        first["TransformJobName"],
    )
    return config


def check(config: dict[str, Any], conn_id: str, taxonomy: Taxonomy) -> dict[str, Any]:
    """Read a Completed canary job's output the way commit_day will; fail (no retry) on anything that would make
    the large jobs' images `failed` rows for a reason that is not the image's. Returns what it found."""
    import json

    name = config["TransformJobName"]
    source = storage.storage_path(config["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"], conn_id)
    outputs = storage.storage_path(config["TransformOutput"]["S3OutputPath"], conn_id)
    outputs.fs.invalidate_cache(outputs.path)  # SageMaker wrote them: a listing cached earlier may predate them
    found: Counter[str] = Counter()
    for request in sorted(p for p in source.iterdir() if p.name.endswith(REQUEST_SUFFIX)):
        sent = [json.loads(line)["key"] for line in request.read_bytes().splitlines() if line.strip()]
        output = outputs / f"{request.name}{OUTPUT_SUFFIX}"
        if not output.exists():
            raise AirflowFailException(f"canary {name} completed but wrote no {output}: nothing to join")
        try:
            parsed = join.parse_output(output)
        except join.OutputShapeError as exc:
            raise AirflowFailException(f"canary {name}: {exc}") from None
        if parsed.unparsed:
            raise AirflowFailException(f"canary {name}: {output}: {parsed.summary()}; expected {join.JOINED_SHAPE}")
        if sorted(parsed.answers) != sorted(sent):
            raise AirflowFailException(
                f"canary {name}: {output} answers keys {sorted(parsed.answers)}, the request sent {sorted(sent)}"
            )
        for key in sent:
            result = join.answer_result(key, parsed.answers[key], taxonomy)
            if result.status == "failed":
                raise AirflowFailException(f"canary {name}: the answer for {key} cannot be read: {result.error}")
            found[result.status] += 1
    if not found:
        raise AirflowFailException(f"canary {name}: no request file under {source}")
    log.info(
        "canary %s passed: %s (invalid = an answer that is not a label: the quality gate judges those)",
        name,
        dict(found),
    )
    return {"name": name, "statuses": dict(found)}


def deployed_taxonomy(settings: Any) -> Taxonomy:
    """The taxonomy of the deployed endpoint (the record every request was built from)."""
    from tasks.model.taxonomy import load_taxonomy
    from tasks.serving import deployment

    record = deployment.current_endpoint(deployment.serving_root(settings))
    if record is None:
        raise AirflowFailException("no endpoint record: deploy_endpoint first")
    return load_taxonomy(record.taxonomy)


def require_passed(ti: Any, dt: str) -> None:
    """commit_day runs whatever happened upstream (a failed large job's days are still committed); after a failed
    canary no large job was created, so committing would only replace the day with `failed` rows that say nothing
    about its images. Refuse instead (no retry), which also fails the run."""
    if ti.xcom_pull(task_ids="transform_requests", map_indexes=-1) and not ti.xcom_pull(
        task_ids="canary", map_indexes=-1
    ):
        raise AirflowFailException(
            f"dt={dt}: the canary did not pass (see the canary task's log), so no transform "
            "job ran; nothing committed. Fix the cause (the log says it) and trigger a new run."
        )
