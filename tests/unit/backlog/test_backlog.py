"""The backlog path below Airflow: chunking and names, the transform request's limits, the estimate, request records
(the endpoint client's exact bodies), the join (every image a row, with a reason when there is no answer), and the
transform operator against a stubbed SageMaker API (the Failed/Stopped/InProgress states moto cannot produce)."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from airflow.providers.amazon.aws.hooks.sagemaker import SageMakerHook
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException, TaskDeferred
from botocore.stub import Stubber

from support.endpoints import endpoint_record
from tasks.backlog import join, plan, requests
from tasks.backlog.plan import RequestFile, Throughput, TransformJob, TransformResources
from tasks.common import storage
from tasks.common.aws_names import check_sagemaker_name
from tasks.common.storage import storage_path
from tasks.costs.pricing import EndpointPricing
from tasks.model.taxonomy import load_taxonomy
from tasks.nightly.classification import PartitionJob
from tasks.nightly.partitions import plan_partition
from tasks.serving.client import build_request, encode_image

DT = "2026-10-05"


def files(counts: list[int], dt: str = DT) -> list[RequestFile]:
    offsets = [sum(counts[:i]) for i in range(len(counts))]
    return [
        RequestFile(dt, {"manifest_uri": "m", "offset": o, "count": c, "index": i}, f"images-{o}-{c}")
        for i, (o, c) in enumerate(zip(offsets, counts, strict=True))
    ]


def test_jobs_hold_consecutive_files_within_the_image_limit_under_deterministic_valid_names() -> None:
    jobs = plan.chunk_jobs(files([2, 2, 1, 2, 5]), prefix="file:///b", run_key="k", identity={}, images_per_job=4)
    assert [[f.shard["index"] for f in j.files] for j in jobs] == [[0, 1], [2, 3], [4]]  # a big file: a job alone
    assert [j.images for j in jobs] == [4, 3, 5]
    for job in jobs:
        check_sagemaker_name(job.name, "job")
        assert job.input_uri == f"file:///b/{job.name}/input/" and job.output_uri == f"file:///b/{job.name}/output/"
    again = plan.chunk_jobs(files([2, 2, 1, 2, 5]), prefix="file:///b", run_key="k", identity={}, images_per_job=4)
    assert [j.name for j in again] == [j.name for j in jobs]  # a rerun with the same work: the same jobs
    changed = plan.chunk_jobs(files([2, 2, 1, 1, 5]), prefix="file:///b", run_key="k", identity={}, images_per_job=4)
    assert changed[0].name == jobs[0].name and changed[1].name != jobs[1].name  # other images: never the old job
    other_run = plan.chunk_jobs(files([2, 2]), prefix="file:///b", run_key="k2", identity={}, images_per_job=4)
    assert other_run[0].name != jobs[0].name
    assert TransformJob.from_dict(jobs[0].to_dict()) == jobs[0]


def test_a_job_is_named_for_the_images_its_files_hold_not_their_offsets(tmp_path: Path, image_bytes) -> None:
    """After a carry-over the same offsets hold other images: a job named by offsets would be attached to, and its
    old outputs joined against files that never sent them."""
    incoming = tmp_path / "incoming"
    incoming.mkdir()

    def planned(keys: list[str]) -> list[str]:
        for old in incoming.iterdir():
            old.unlink()
        for key in keys:
            (incoming / key).write_bytes(image_bytes(seed=int(key[4])))
        for key in keys:
            os.utime(incoming / key, ns=(1, 1))  # the same file, rewritten: the same version
        day = plan_partition(
            storage_path(uri(incoming)),
            storage_path(uri(tmp_path / "predictions" / f"dt={DT}")),
            dt=DT,
            model_version="v1",
            shard_size=2,
        )
        jobs = plan.chunk_jobs(
            plan.request_files(DT, day.shards), prefix="file:///b", run_key="k", identity={}, images_per_job=2
        )
        assert [(f.shard["offset"], f.shard["count"]) for j in jobs for f in j.files] == [(0, 2), (2, 2)]
        return [job.name for job in jobs]

    first = planned(["img-0.png", "img-1.png", "img-2.png", "img-3.png"])
    assert planned(["img-0.png", "img-1.png", "img-2.png", "img-3.png"]) == first  # a new manifest, the same work
    shifted = planned(["img-1.png", "img-2.png", "img-3.png", "img-4.png"])
    assert shifted[0] != first[0] and shifted[1] != first[1]
    assert planned(["img-0.png", "img-1.png", "img-3.png", "img-4.png"])[0] == first[0]  # the first file unchanged


def test_the_transform_request_keeps_payload_times_concurrency_within_100_mb() -> None:
    job = plan.chunk_jobs(files([2]), prefix="s3://b/p", run_key="k", identity={}, images_per_job=4)[0]
    request = plan.transform_request(
        job, TransformResources("ml.g5.xlarge", 3, 64), model_name="m", max_record_bytes=1000
    )
    assert (request["MaxPayloadInMB"], request["MaxConcurrentTransforms"]) == (1, 64)
    assert request["TransformResources"] == {"InstanceType": "ml.g5.xlarge", "InstanceCount": 3}
    assert request["BatchStrategy"] == "SingleRecord" and request["TransformInput"]["SplitType"] == "Line"
    big = plan.transform_request(
        job, TransformResources("ml.g5.xlarge", 1, 64), model_name="m", max_record_bytes=3 * 2**20 + 1
    )
    assert (big["MaxPayloadInMB"], big["MaxConcurrentTransforms"]) == (4, 25)  # 4 MB x 25 = 100 MB
    assert len(big["DataProcessing"]["OutputFilter"]) <= 63 and len(big["DataProcessing"]["InputFilter"]) <= 63
    with pytest.raises(ValueError, match="100 MB"):
        plan.transform_request(
            job, TransformResources("ml.g5.xlarge", 1, 8), model_name="m", max_record_bytes=101 * 2**20
        )
    for bad in (
        {"instance_count": 0},
        {"instance_count": 101},
        {"invocation_timeout_s": 3601},
        {"invocation_retries": 4},
        {"concurrency": 0},
    ):
        with pytest.raises(ValueError):
            TransformResources(**{"instance_type": "ml.g5.xlarge", "instance_count": 1, "concurrency": 8, **bad})


def test_the_estimate_counts_startup_per_job_and_instance_and_sizes_a_deadline() -> None:
    pricing = EndpointPricing("sagemaker", "us-east-1", "ml.g5.xlarge", 4)
    speed = Throughput(1000 / 674, "assumed")
    result = plan.estimate_transform(1_000_000, 2, pricing, speed, startup_s=600, deadline_hours=24)
    compute_h = 1_000_000 * 0.674 / 3600  # 187.2 instance-hours of inference
    assert result.instance_hours == pytest.approx(compute_h + 2 * 600 * 4 / 3600 + 600 / 3600)  # + the canary
    assert result.wall_hours == pytest.approx(600 / 3600 + 2 * 600 / 3600 + compute_h / 4)
    assert result.usd == pytest.approx(result.instance_hours * 1.408)
    assert result.instances_for_deadline == 8  # 187.2 h of work in 24 h minus 30 min of start-ups: 7.97
    assert (
        plan.estimate_transform(1_000_000, 1, pricing, speed, startup_s=600, deadline_hours=0.1).instances_for_deadline
        is None
    )
    assert plan.estimate_transform(0, 0, pricing, speed, startup_s=600).usd == 0.0
    assert any("ASSUMED" in line or "assumed" in line for line in result.lines())


def uri(path: Path) -> str:
    return f"file://{path}"  # Path.as_uri() would escape the "=" of dt=…


@pytest.fixture
def day(tmp_path: Path, image_bytes) -> tuple[PartitionJob, TransformJob, RequestFile]:
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    for i in range(3):
        (incoming / f"img-{i}.png").write_bytes(image_bytes(seed=i))
    (incoming / "img-9-broken.png").write_bytes(b"not an image")
    record = replace(endpoint_record("http://127.0.0.1:9"), supports_choice=True)
    partition = storage_path(uri(tmp_path / "predictions" / f"dt={DT}"))
    day_plan = plan_partition(storage_path(uri(incoming)), partition, dt=DT, model_version="v1", shard_size=10)
    job = PartitionJob(DT, uri(incoming), str(partition), day_plan.run_token, record, 4, "aws_default")
    [request] = plan.request_files(DT, day_plan.shards)
    [transform_job] = plan.chunk_jobs(
        [request], prefix=uri(tmp_path / "backlog"), run_key="k", identity={}, images_per_job=10
    )
    return job, transform_job, request


def test_a_record_is_the_endpoint_clients_body_and_a_broken_image_is_indexed_as_rejected(day, image_bytes) -> None:
    job, transform_job, request = day
    from tasks.nightly.partitions import Shard

    written = requests.write_request_file(
        job, Shard(**request.shard), transform_job.input_uri + request.name, transform_job.index_uri(request)
    )
    assert (written.images, written.records) == (4, 3)
    lines = storage_path(transform_job.input_uri + request.name).read_bytes().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["key"] for r in records] == ["img-0.png", "img-1.png", "img-2.png"]
    client = job.client()
    expected = build_request(
        client.prompt, encode_image(image_bytes(seed=0), client.policy), client.spec, client.choices
    )
    assert records[0]["body"] == expected and "structured_outputs" in expected  # the label constraint travels
    assert written.max_record_bytes == max(len(line) + 1 for line in lines)
    index = requests.read_index(storage_path(transform_job.index_uri(request)))
    assert [(e["key"], e["rejected"] is not None) for e in index][-1] == ("img-9-broken.png", True)


def answer(content: str) -> dict:
    return {
        "choices": [{"message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 40, "completion_tokens": 6},
    }


def test_the_join_gives_every_image_a_row_and_says_why_one_has_no_answer(day) -> None:
    job, transform_job, request = day
    from tasks.nightly.partitions import Shard

    requests.write_request_file(
        job, Shard(**request.shard), transform_job.input_uri + request.name, transform_job.index_uri(request)
    )
    digits = load_taxonomy("digits")
    failed_job = {"status": "Failed", "failure_reason": "ClientError: 424 from the model", "seconds": 10.0}
    result = join.join_file(job, transform_job, request, failed_job, digits)  # no .out: the job failed on it
    rows = _rows(job, result)
    assert [r["status"] for r in rows] == ["failed", "failed", "failed", "rejected"]
    assert "ClientError: 424 from the model" in rows[0]["reason"] and rows[0]["content_sha256"]

    out = storage_path(transform_job.output_uri) / f"{request.name}.out"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"key": "img-0.png", "SageMakerOutput": answer("this is a photo of 7.")})
        + "\n\n"
        + json.dumps({"key": "img-2.png", "SageMakerOutput": answer("a kitchen")})
        + "\n"
    )
    rows = _rows(job, join.join_file(job, transform_job, request, {"status": "Completed"}, digits))
    assert [(r["key"], r["status"], r["label"]) for r in rows] == [
        ("img-0.png", "ok", "7"),
        ("img-1.png", "failed", None),
        ("img-2.png", "invalid", None),
        ("img-9-broken.png", "rejected", None),
    ]
    assert "has no line for this image" in rows[1]["reason"] and rows[0]["prompt_tokens"] == 40

    out.write_text(json.dumps({"key": "someone-else.png", "SageMakerOutput": answer("7")}) + "\n")
    with pytest.raises(RuntimeError, match="never sent"):
        join.join_file(job, transform_job, request, {"status": "Completed"}, digits)


def _rows(job: PartitionJob, result) -> list[dict]:
    from tasks.nightly import predictions

    return predictions.read_table(storage_path(f"{job.partition_uri}/{result.path}")).to_pylist()


def test_a_days_billed_share_splits_each_jobs_seconds_by_its_images() -> None:
    a, b = files([3, 1], dt="2026-10-05"), files([4], dt="2026-10-06")
    jobs = [TransformJob(0, "j0", "p0", [a[0]]), TransformJob(1, "j1", "p1", [a[1], b[0]])]
    outcomes = {"j0": {"seconds": 30.0}, "j1": {"seconds": 50.0}}
    assert join.billed_share("2026-10-05", jobs, outcomes) == pytest.approx(30 + 50 * 1 / 5)
    assert join.billed_share("2026-10-06", jobs, outcomes) == pytest.approx(50 * 4 / 5)
    assert join.billed_share("2026-10-06", jobs, {"j1": None}) == 0.0


# --- AttachingTransformOperator against a stubbed SageMaker API ----------------------------------------------------
JOB = "backlog-2026-10-05-2026-10-07-j000-0123abcd"
START = datetime(2026, 12, 1, tzinfo=UTC)


@pytest.fixture
def transform(monkeypatch):
    from tasks.backlog.sagemaker import AttachingTransformOperator

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setattr(SageMakerHook, "check_s3_url", lambda self, url: True)  # the request files "exist"
    job = plan.chunk_jobs(files([2]), prefix="s3://b/backlog/run", run_key="k", identity={}, images_per_job=4)[0]
    config = plan.transform_request(job, TransformResources("ml.g5.xlarge", 2, 16), model_name="m", max_record_bytes=10)
    config["TransformJobName"] = JOB
    operator = AttachingTransformOperator(task_id="transform", config=config, aws_conn_id=None, region_name="us-east-1")
    with Stubber(operator.hook.conn) as stubber:
        yield operator, stubber, config
        stubber.assert_no_pending_responses()


def described(status: str, **extra) -> dict:
    return {
        "TransformJobName": JOB,
        "TransformJobArn": f"arn:aws:sagemaker:us-east-1:123456789012:transform-job/{JOB}",
        "TransformJobStatus": status,
        "ModelName": "m",
        "CreationTime": START,
        "TransformInput": {"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://b/in/"}}},
        "TransformOutput": {"S3OutputPath": "s3://b/out/"},
        "TransformResources": {"InstanceType": "ml.g5.xlarge", "InstanceCount": 2},
        **extra,
    }


NOT_FOUND = {"service_error_code": "ValidationException", "service_message": f"Could not find transform job {JOB}"}


@pytest.mark.parametrize("status", ["Failed", "Stopped"])
def test_a_new_transform_job_that_ends_badly_fails_the_task_with_its_reason(transform, status) -> None:
    operator, stub, config = transform
    reason = "ClientError: See job logs for more information" if status == "Failed" else "Stopped by user"
    stub.add_client_error("describe_transform_job", **NOT_FOUND)
    stub.add_response("create_transform_job", {"TransformJobArn": "arn"}, config)
    stub.add_response("describe_transform_job", described(status, FailureReason=reason), {"TransformJobName": JOB})
    with pytest.raises(AirflowFailException, match=f"transform job {JOB} ended {status}: {reason}"):
        operator.execute({})


def test_an_existing_transform_job_is_attached_to_never_created_twice(transform) -> None:
    operator, stub, _ = transform
    stub.add_response("describe_transform_job", described("InProgress"), {"TransformJobName": JOB})
    stub.add_response("describe_transform_job", described("InProgress"), {"TransformJobName": JOB})
    with pytest.raises(TaskDeferred) as deferred:  # no create_transform_job stubbed: creating one would fail
        operator.execute({})
    assert deferred.value.trigger.job_name == JOB
    done = described("Completed", TransformStartTime=START, TransformEndTime=START + timedelta(seconds=90))
    stub.add_response("describe_transform_job", done, {"TransformJobName": JOB})
    outcome = operator.execute_complete({}, {"status": "success", "job_name": JOB})
    assert (outcome["status"], outcome["seconds"], outcome["instance_count"]) == ("Completed", 90.0, 2)


def test_success_is_the_transform_jobs_status_not_the_trigger_event(transform) -> None:
    operator, stub, _ = transform
    stub.add_response("describe_transform_job", described("Failed", FailureReason="AlgorithmError: OOM"))
    with pytest.raises(AirflowFailException, match="AlgorithmError: OOM"):
        operator.execute_complete({}, {"status": "success", "job_name": JOB})


# --- the strict join and the canary ---------------------------------------------------------------------------------
def _written(day) -> tuple[PartitionJob, TransformJob, RequestFile, Path]:
    job, transform_job, request = day
    from tasks.nightly.partitions import Shard

    requests.write_request_file(
        job, Shard(**request.shard), transform_job.input_uri + request.name, transform_job.index_uri(request)
    )
    out = storage_path(transform_job.output_uri) / f"{request.name}.out"
    out.parent.mkdir(parents=True, exist_ok=True)
    return job, transform_job, request, out


def test_a_transform_out_of_an_unexpected_shape_fails_loudly_instead_of_failing_every_image(day) -> None:
    """Old code skipped every line that was not a dict with a string key: a job that joined into another shape
    (here `[key, answer]` arrays) was Completed and every image silently became a `failed` row."""
    job, transform_job, request, out = _written(day)
    out.write_text("".join(json.dumps([k, answer("7")]) + "\n" for k in ("img-0.png", "img-1.png", "img-2.png")))
    with pytest.raises(AirflowFailException, match=r"none of its 3 line\(s\) has the joined shape") as raised:
        join.join_file(job, transform_job, request, {"status": "Completed"}, load_taxonomy("digits"))
    assert "line 1: a JSON list, not an object" in str(raised.value) and "SageMakerOutput" in str(raised.value)
    assert type(raised.value).__name__ == "OutputShapeError"  # an AirflowFailException: the file will not change


def test_lines_that_cannot_be_parsed_are_counted_and_named_in_the_failed_rows_reason(day) -> None:
    job, transform_job, request, out = _written(day)
    out.write_text(
        json.dumps({"key": "img-0.png", "SageMakerOutput": answer("this is a photo of 7.")})
        + "\n"
        + '{"key": "img-1.png", "SageMakerOutput": {"choices": [tru\n'
        + json.dumps({"key": "img-2.png", "output": answer("7")})
        + "\n"
    )
    rows = _rows(job, join.join_file(job, transform_job, request, {"status": "Completed"}, load_taxonomy("digits")))
    assert [(r["key"], r["status"]) for r in rows] == [
        ("img-0.png", "ok"),
        ("img-1.png", "failed"),
        ("img-2.png", "failed"),
        ("img-9-broken.png", "rejected"),
    ]
    reason = rows[1]["reason"]
    assert reason == rows[2]["reason"] and "2 of its 3 line(s) could not be parsed" in reason
    assert "line 2: not JSON" in reason and "line 3: no 'SageMakerOutput'" in reason
    assert "has no line for this image" not in reason


def assert_the_airflow_role_may_create(name: str) -> None:
    """The Airflow role creates transform jobs under one name prefix only (the policy's Resource, `...:transform-job/
    backlog-*`): a canary or follow-up named otherwise would be AccessDenied in a real account."""
    policy = json.loads((Path(__file__).parents[3] / "include/aws/airflow-role-policy.json").read_text())
    [resource] = [s["Resource"] for s in policy["Statement"] if "sagemaker:CreateTransformJob" in s["Action"]]
    prefix = resource.split(":transform-job/", 1)[1]
    assert prefix.endswith("*") and "*" not in prefix[:-1] and name.startswith(prefix[:-1]), (name, resource)


def _local_request(transform_job: TransformJob) -> dict:
    return plan.transform_request(
        transform_job, TransformResources("local", 2, 4), model_name="m", max_record_bytes=1000
    )


def test_the_canary_is_the_first_records_of_the_first_file_under_the_first_jobs_request(day) -> None:
    from tasks.backlog import canary

    _, transform_job, request, _ = _written(day)
    first = _local_request(transform_job)
    config = canary.canary_request([first, {"unused": True}], "aws_default", records=2)
    assert config["TransformJobName"] == canary.canary_name(first["TransformJobName"], 2)
    check_sagemaker_name(config["TransformJobName"], "job")
    assert_the_airflow_role_may_create(config["TransformJobName"])
    assert canary.canary_request([first], "aws_default", records=2) == config  # a retry: the same job, same input
    assert config["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"] == f"{transform_job.prefix}/canary/input/"
    assert config["TransformOutput"]["S3OutputPath"] == f"{transform_job.prefix}/canary/output/"
    assert config["TransformResources"] == {"InstanceType": "local", "InstanceCount": 1}
    same = {k: v for k, v in config.items() if k not in ("TransformJobName", "TransformResources")}
    for field, value in same.items():  # every other setting is the first job's
        if field == "TransformInput":
            assert {**value, "DataSource": None} == {**first[field], "DataSource": None}
        elif field == "TransformOutput":
            assert {**value, "S3OutputPath": None} == {**first[field], "S3OutputPath": None}
        else:
            assert value == first[field], field
    sent = storage_path(f"{transform_job.prefix}/canary/input/{request.name}").read_bytes().splitlines()
    original = storage_path(transform_job.input_uri + request.name).read_bytes().splitlines()
    assert sent == original[:2]
    assert first["TransformJobName"] == transform_job.name  # the first job's request is untouched


def _canary_out(config: dict, request: RequestFile, lines: list) -> None:
    out = storage_path(config["TransformOutput"]["S3OutputPath"]) / f"{request.name}.out"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))


def test_the_canary_passes_only_on_output_the_join_can_read(day) -> None:
    from tasks.backlog import canary

    _, transform_job, request, _ = _written(day)
    config = canary.canary_request([_local_request(transform_job)], "aws_default", records=2)
    name, digits = config["TransformJobName"], load_taxonomy("digits")
    with pytest.raises(AirflowFailException, match=f"canary {name} completed but wrote no .*{request.name}.out"):
        canary.check(config, "aws_default", digits)
    good = [
        {"key": "img-0.png", "SageMakerOutput": answer("this is a photo of 7.")},
        {"key": "img-1.png", "SageMakerOutput": answer("a kitchen")},
    ]
    _canary_out(config, request, good)
    assert canary.check(config, "aws_default", digits) == {"name": name, "statuses": {"ok": 1, "invalid": 1}}
    _canary_out(config, request, [[g["key"], g["SageMakerOutput"]] for g in good])  # another shape
    with pytest.raises(AirflowFailException, match=r"none of its 2 line.* has the joined shape"):
        canary.check(config, "aws_default", digits)
    _canary_out(config, request, [good[0], "{not json"])
    with pytest.raises(AirflowFailException, match=r"1 of its 2 line\(s\) could not be parsed \(line 2: not JSON"):
        canary.check(config, "aws_default", digits)
    _canary_out(config, request, [good[0]])
    with pytest.raises(AirflowFailException, match="answers keys"):
        canary.check(config, "aws_default", digits)
    _canary_out(config, request, [good[0], {"key": "img-1.png", "SageMakerOutput": {"code": 424, "error": "bad"}}])
    with pytest.raises(AirflowFailException, match=r"the answer for img-1\.png cannot be read: server error"):
        canary.check(config, "aws_default", digits)
    with pytest.raises(AirflowSkipException):
        canary.canary_request([], "aws_default")


@pytest.fixture
def canary_operator(transform, tmp_path):
    from tasks.backlog.sagemaker import CanaryTransformOperator

    _, _, config = transform
    operator = CanaryTransformOperator(
        task_id="canary", config=config, settings=None, aws_conn_id=None, region_name="us-east-1"
    )
    with Stubber(operator.hook.conn) as stubber:
        yield operator, stubber, config
        stubber.assert_no_pending_responses()


def test_a_failed_canary_job_fails_with_sagemakers_reason_before_reading_any_output(canary_operator) -> None:
    operator, stub, config = canary_operator
    reason = "ClientError: Please ensure the model container responds to /ping within 1200 seconds"
    stub.add_client_error("describe_transform_job", **NOT_FOUND)
    stub.add_response("create_transform_job", {"TransformJobArn": "arn"}, config)
    stub.add_response("describe_transform_job", described("Failed", FailureReason=reason), {"TransformJobName": JOB})
    with pytest.raises(AirflowFailException, match=f"transform job {JOB} ended Failed: {reason}"):
        operator.execute({})  # settings=None: reading the output would raise something else


# --- one bad record costs one image: the follow-up job of a Failed job ---------------------------------------------
class _RejectsMarked(BaseHTTPRequestHandler):
    """A chat endpoint that answers every body, except one marked "reject", with HTTP 424 (LMI's input error)."""

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        status, payload = (424, {"code": 424, "error": "bad input"}) if body.get("reject") else (200, OK_ANSWER)
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


OK_ANSWER = answer("this is a photo of 3.")


@pytest.fixture
def rejecting_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RejectsMarked)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join()


def test_one_rejected_record_costs_one_image_not_its_whole_file(day, rejecting_server) -> None:
    from tasks.backlog import records
    from tasks.backlog.local import job_file, run_transform

    job, transform_job, request, _ = _written(day)
    source = storage_path(transform_job.input_uri + request.name)
    lines = [json.loads(line) for line in source.read_bytes().splitlines()]
    lines[1]["body"]["reject"] = True  # img-1.png: the container rejects it, every time
    source.write_bytes(b"".join(requests.record_line(r["key"], r["body"]) for r in lines))
    config = plan.transform_request(
        transform_job, TransformResources("local", 1, 4, invocation_retries=1), model_name="m", max_record_bytes=10_000
    )
    digits = load_taxonomy("digits")

    described = run_transform(config, rejecting_server, "aws_default")
    assert described["TransformJobStatus"] == "Failed" and "HTTP 424" in described["FailureReason"]
    outcome = join.job_outcome(described)
    alone = _rows(job, join.join_file(job, transform_job, request, outcome, digits))  # the old behaviour
    assert [r["status"] for r in alone] == ["failed", "failed", "failed", "rejected"]  # 3 images for 1 bad record

    def describe(r: dict) -> dict | None:
        return storage.read_json(job_file(r["TransformOutput"]["S3OutputPath"], "aws_default"))

    [follow_up] = records.record_requests([config], "aws_default", describe)
    assert records.record_requests([config], "aws_default", describe) == [follow_up]  # a retry: the same job
    assert follow_up["TransformJobName"] == plan.records_job(transform_job).name
    check_sagemaker_name(follow_up["TransformJobName"], "job")
    assert_the_airflow_role_may_create(follow_up["TransformJobName"])
    assert {
        k: v for k, v in follow_up.items() if k not in ("TransformJobName", "TransformInput", "TransformOutput")
    } == {k: v for k, v in config.items() if k not in ("TransformJobName", "TransformInput", "TransformOutput")}
    sent = sorted(p.name for p in storage_path(plan.records_job(transform_job).input_uri).iterdir())
    assert sent == [plan.record_file_name(request.name, n) for n in range(3)]  # one record per file

    again = run_transform(follow_up, rejecting_server, "aws_default")
    assert again["TransformJobStatus"] == "Failed"  # the one bad record, alone in its file
    rows = _rows(job, join.join_file(job, transform_job, request, outcome, digits, join.job_outcome(again)))
    assert [(r["key"], r["status"], r["label"]) for r in rows] == [
        ("img-0.png", "ok", "3"),
        ("img-1.png", "failed", None),
        ("img-2.png", "ok", "3"),
        ("img-9-broken.png", "rejected", None),
    ]
    reason = rows[1]["reason"]
    assert f"job {transform_job.name} Failed" in reason and f"follow-up job {follow_up['TransformJobName']}" in reason
    assert "HTTP 424" in reason

    completed = {**config, "TransformJobName": "other"}
    assert records.record_requests([completed], "aws_default", lambda r: {"TransformJobStatus": "Completed"}) == []
    assert records.record_requests([completed], "aws_default", lambda r: None) == []  # never created


def test_a_job_that_answered_no_file_gets_no_follow_up_for_more_than_a_few_records(day, monkeypatch) -> None:
    """Nothing answered at all is the job's failure (capacity, an internal error), not a record's: re-sending a large
    job one record per file would write a file per image for a follow-up that fails the same way."""
    from tasks.backlog import records

    _, transform_job, _, _ = _written(day)
    config = _local_request(transform_job)
    failed = {"TransformJobStatus": "Failed", "FailureReason": "CapacityError: insufficient capacity"}
    monkeypatch.setattr(records, "MAX_BLIND_RECORDS", 2)  # the file holds 3 records
    assert records.record_requests([config], "aws_default", lambda r: failed) == []
    assert not storage_path(plan.records_job(transform_job).input_uri).exists()
    monkeypatch.setattr(records, "MAX_BLIND_RECORDS", 3)
    [follow_up] = records.record_requests([config], "aws_default", lambda r: failed)
    assert follow_up["TransformJobName"] == plan.records_job(transform_job).name


def test_days_between_names_the_params_of_a_bad_date_or_a_reversed_range() -> None:
    with pytest.raises(ValueError, match=r"^to_date 2026-11-01 is before from_date 2026-11-30$"):
        plan.days_between("2026-11-30", "2026-11-01")
    with pytest.raises(ValueError, match=r"^from_date: '2026-11-1' is not a date \(YYYY-MM-DD\)$"):
        plan.days_between("2026-11-1", "2026-11-02")
    assert plan.days_between("2026-11-30", "2026-12-01") == ["2026-11-30", "2026-12-01"]
