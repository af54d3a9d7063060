"""The local backlog backend: a small runner that does what Batch Transform does, against the local endpoint.

It honours the same CreateTransformJob request the SageMaker backend sends: every request file under the input
prefix, one POST per record (SingleRecord, the InputFilter's `$.body`), at most MaxConcurrentTransforms x
InstanceCount in flight, each invocation retried InvocationsMaxRetries times within InvocationsTimeoutInSeconds;
`<file>.out` lines `{"key", "SageMakerOutput"}` in input order, written only when every record of the file got an
answer. A file with a failed record gets no `.out` and the job ends Failed (it still processes the other files),
as Batch Transform does. What `DescribeTransformJob` would say is written to `<job>/job.json`; a retry finds it and
does not run the job again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import UTC, datetime
from typing import Any

from airflow.sdk import XComArg, task
from airflow.sdk.exceptions import AirflowFailException

from tasks.backlog.join import job_outcome
from tasks.backlog.plan import INPUT_FILTER, OUTPUT_FILTER, OUTPUT_SUFFIX, REQUEST_SUFFIX, TransformJob
from tasks.common import storage
from tasks.common.progress import Progress
from tasks.common.settings import Settings
from tasks.records.endpoint import EndpointRecord
from tasks.serving.client import EndpointSpec, HttpTransport, RequestError

log = logging.getLogger(__name__)
JOB_FILE = "job.json"
TRANSFORM_DOC = """Runs the job's request files through the local endpoint the way Batch Transform would (one POST per
record, `.out` files in input order, none for a file with a failed record). A job that already ran (its `job.json`
exists) is not run again. **Failed**: the log names the files and the first error; `transform_records` sends their
records again one per file, and only the records that fail alone become `failed` rows in commit_day."""


def job_file(output_uri: str, conn_id: str) -> Any:
    return storage.storage_path(output_uri.rstrip("/").rsplit("/", 1)[0], conn_id) / JOB_FILE


def run_transform(request: dict[str, Any], url: str, conn_id: str) -> dict[str, Any]:
    """Run a transform request against the OpenAI-compatible server at `url`; returns the job's description."""
    _check_supported(request)
    described = job_file(request["TransformOutput"]["S3OutputPath"], conn_id)
    done = storage.read_json(described)
    if done is not None:
        log.info("transform job %s already ran (%s): not running it again", request["TransformJobName"], described)
        return done
    started = datetime.now(UTC)
    failures = asyncio.run(_run(request, url, conn_id))
    description = {
        "TransformJobName": request["TransformJobName"],
        "TransformJobStatus": "Failed" if failures else "Completed",
        "FailureReason": f"{len(failures)} input file(s) failed; first: {failures[0]}" if failures else "",
        "TransformStartTime": started.isoformat(),
        "TransformEndTime": datetime.now(UTC).isoformat(),
        "TransformResources": request["TransformResources"],
    }
    storage.write_json(described, description)
    return description


def _check_supported(request: dict[str, Any]) -> None:
    """The runner implements exactly the settings the planner sends; anything else is an error, not a guess."""
    processing = request["DataProcessing"]
    wanted = {
        "BatchStrategy": (request["BatchStrategy"], "SingleRecord"),
        "SplitType": (request["TransformInput"]["SplitType"], "Line"),
        "AssembleWith": (request["TransformOutput"]["AssembleWith"], "Line"),
        "InputFilter": (processing["InputFilter"], INPUT_FILTER),
        "JoinSource": (processing["JoinSource"], "Input"),
        "OutputFilter": (processing["OutputFilter"], OUTPUT_FILTER),
    }
    wrong = {name: got for name, (got, want) in wanted.items() if got != want}
    if wrong:
        raise ValueError(f"the local transform runner does not implement {wrong}")


async def _run(request: dict[str, Any], url: str, conn_id: str) -> list[str]:
    client = request["ModelClientConfig"]
    spec = EndpointSpec("openai_http", url=url, timeout_s=float(client["InvocationsTimeoutInSeconds"]))
    concurrency = int(request["MaxConcurrentTransforms"]) * int(request["TransformResources"]["InstanceCount"])
    transport = HttpTransport(spec, concurrency)
    source = storage.storage_path(request["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"], conn_id)
    output = storage.storage_path(request["TransformOutput"]["S3OutputPath"], conn_id)
    files = sorted(p for p in source.iterdir() if p.name.endswith(REQUEST_SUFFIX)) if source.exists() else []
    progress = Progress(len(files), f"transform {request['TransformJobName']}", log=log)
    gate = asyncio.Semaphore(concurrency)
    failures: list[str] = []

    async def invoke(body: bytes) -> bytes:
        async with gate:
            for attempt in range(int(client["InvocationsMaxRetries"]) + 1):
                try:
                    return await transport.post(body)
                except RequestError as exc:
                    if attempt == int(client["InvocationsMaxRetries"]):
                        raise
                    log.debug("retrying after %s", exc)
            raise AssertionError("unreachable")

    try:
        for path in files:
            if (output / f"{path.name}{OUTPUT_SUFFIX}").exists():  # a crashed try's complete output: keep it
                progress.advance()
                continue
            records = [json.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
            bodies = [json.dumps(record["body"]).encode() for record in records]  # InputFilter "$.body"
            answers = await asyncio.gather(*(invoke(body) for body in bodies), return_exceptions=True)
            failed = next((a for a in answers if isinstance(a, BaseException)), None)
            if failed is not None:
                failures.append(f"{path.name}: {type(failed).__name__}: {failed}")
                log.warning("transform: %s failed (%s): no %s written", path.name, failed, OUTPUT_SUFFIX)
            else:
                lines = (
                    json.dumps({"key": r["key"], "SageMakerOutput": _embedded(a)}) + "\n"
                    for r, a in zip(records, answers, strict=True)
                )
                storage.write_bytes_atomic(output / f"{path.name}{OUTPUT_SUFFIX}", "".join(lines).encode())
            progress.advance()
    finally:
        await transport.aclose()
    progress.finish()
    return failures


def _embedded(answer: bytes) -> Any:
    """JoinSource=Input embeds a JSON answer as an object; anything else as its text."""
    try:
        return json.loads(answer)
    except ValueError:
        return answer.decode("utf-8", errors="replace")


def check_ended_well(description: dict[str, Any]) -> dict[str, Any]:
    """Fail like the SageMaker operator does: without a retry (the job ended), with the reason."""
    name, status = description["TransformJobName"], description["TransformJobStatus"]
    if status != "Completed":
        raise AirflowFailException(f"transform job {name} ended {status}: {description['FailureReason']}")
    return description


def run_job(settings: Settings, config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run one transform request against the deployed local endpoint: (the job's description, the endpoint record)."""
    from tasks.nightly.classification import deployed_endpoint

    record = deployed_endpoint(settings)  # restarts a local server that died
    if record.endpoint_name != config["ModelName"]:
        raise AirflowFailException(
            f"the request is for {config['ModelName']!r}, the deployed endpoint is {record.endpoint_name!r}"
        )
    started = time.monotonic()
    description = run_transform(config, record.url, settings.aws_conn_id)
    status, seconds = description["TransformJobStatus"], time.monotonic() - started
    log.info("transform job %s: %s in %.1f s", config["TransformJobName"], status, seconds)
    return description, record


class LocalBacklog:
    """Batch Transform's contract, run by `run_transform` against the deployed local endpoint."""

    default_instance_type = "local"
    assumed_images_per_second = 1.0  # replaced by what the ledger measures on the local server
    assumed_basis = "a round guess for the tiny CPU model"
    startup_s = 0.0  # the endpoint is already up: no model to load per job

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.price_region = "local"

    def model_name(self, record: EndpointRecord) -> str:
        return record.endpoint_name

    def uri(self, storage_uri: str) -> str:
        return storage_uri

    def transform(self, requests: XComArg, pool: str) -> XComArg:
        """canary_request → canary → transform ×jobs → record_requests → transform_records, as on SageMaker."""
        settings = self.settings

        @task(task_id="transform", pool=pool, doc_md=TRANSFORM_DOC)
        def transform(config: dict[str, Any]) -> dict[str, Any]:
            return check_ended_well(run_job(settings, config)[0])

        large = transform.expand(config=requests)
        self.canary(requests, pool) >> large
        follow_ups = self.record_requests(requests)
        large >> follow_ups
        return self.transform_records(follow_ups, pool)

    def record_requests(self, requests: XComArg) -> XComArg:
        from airflow.sdk import TriggerRule

        from tasks.backlog import records

        conn_id = self.settings.aws_conn_id

        @task(task_id="record_requests", trigger_rule=TriggerRule.ALL_DONE, doc_md=records.DOC)
        def record_requests(configs: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
            def describe(request: dict[str, Any]) -> dict[str, Any] | None:
                return storage.read_json(job_file(request["TransformOutput"]["S3OutputPath"], conn_id))

            return records.record_requests(configs, conn_id, describe)

        return record_requests(requests)

    def transform_records(self, follow_ups: XComArg, pool: str) -> XComArg:
        from tasks.backlog import records

        settings = self.settings

        @task(task_id="transform_records", pool=pool, doc_md=records.TRANSFORM_DOC)
        def transform_records(config: dict[str, Any]) -> dict[str, Any]:
            return check_ended_well(run_job(settings, config)[0])

        return transform_records.expand(config=follow_ups)

    def canary(self, requests: XComArg, pool: str) -> XComArg:
        from tasks.backlog import canary

        settings = self.settings

        @task(task_id="canary_request", doc_md=canary.REQUEST_DOC)
        def canary_request(configs: list[dict[str, Any]]) -> dict[str, Any]:
            return canary.canary_request(configs, settings.aws_conn_id)

        @task(task_id="canary", pool=pool, doc_md=canary.DOC)
        def run_canary(config: dict[str, Any]) -> dict[str, Any]:
            from tasks.model.taxonomy import load_taxonomy

            description, record = run_job(settings, config)
            outcome = job_outcome(check_ended_well(description))
            return {**outcome, **canary.check(config, settings.aws_conn_id, load_taxonomy(record.taxonomy))}

        return run_canary(canary_request(requests))

    def outcome(self, job: TransformJob) -> dict[str, Any] | None:
        return job_outcome(storage.read_json(job_file(job.output_uri, self.settings.aws_conn_id)))
