"""classify_backlog through `bin/airflow dags test`: on the local backend against a real vLLM server (the
days it commits equal what classify_images commits), and on the SageMaker backend against moto_server (a canary that
wrote no `.out` fails the run before any large job exists; then one transform job per planned chunk with the Batch
Transform settings, none more on a rerun; prepared `.out` files join into rows).
"""

from __future__ import annotations

import ast
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from support.digits import tiny_digits_model
from support.endpoints import committed, deploy_locally, endpoint_record, stable
from tasks.backlog import canary
from tasks.common import storage
from tasks.common.settings import load_settings
from tasks.costs import ledger
from tasks.model.demo_data import write_incoming
from tasks.nightly import predictions
from tasks.records.endpoint import EndpointRecord
from tasks.serving.local import state_path
from tasks.serving.local_server import stop_local_server
from tests.integration.conftest import AirflowRunner, Moto

pytestmark = pytest.mark.slow
DAYS = ["2026-11-10", "2026-11-11", "2026-11-12"]  # on or after the nightly start date: classify_images runs them
# Small files and jobs so three days make several of each; an untrained model answers garbage: the gate only warns.
CONF = {
    "from_date": DAYS[0],
    "to_date": DAYS[-1],
    "images_per_file": 2,
    "images_per_job": 4,
    "quality": {"on_violation": "warn"},
}
LOGICAL_DATE = "2026-12-01T00:00:00+00:00"


@pytest.fixture(scope="module")
def local(local_airflow: AirflowRunner, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowRunner]:
    airflow = AirflowRunner(local_airflow.env | {"PIPELINE_STORAGE_URI": tmp_path_factory.mktemp("storage").as_uri()})
    settings = load_settings(airflow.env)
    deploy_locally(settings, tiny_digits_model(tmp_path_factory.mktemp("backlog") / "model"), "v-backlog")
    root = storage.root(settings)
    write_incoming(root / storage.INCOMING, DAYS, list(range(15)))
    first = Path(root.path) / storage.INCOMING / f"dt={DAYS[0]}"
    (first / "broken.png").write_bytes(b"not an image")
    yield airflow
    stop_local_server(state_path(settings))


def test_local_backlog_commits_the_same_days_as_classify_images(local: AirflowRunner) -> None:
    root = Path(storage.root(load_settings(local.env)).path)
    result = local.dags_test("classify_backlog", CONF, logical_date=LOGICAL_DATE)
    assert result.succeeded, result.output[-6000:]
    assert "instance-hours" in result.output and "ASSUMED" in result.output  # the pre-flight, before any ledger row
    # the run note (logged: no API server under dags test): the range, then a line per day
    assert f"**dt={DAYS[0]}..{DAYS[-1]} · {len(DAYS)} of {len(DAYS)} days committed · 16 images" in result.output
    assert f"- dt={DAYS[0]}: 6 images (ok " in result.output
    backlog = {}
    for day in DAYS:
        manifest, rows = committed(root, day)
        images = sorted(p.name for p in (root / "incoming" / f"dt={day}").iterdir())
        assert [row["key"] for row in rows] == images and manifest["rows"] == len(images)
        backlog[day] = (manifest, rows)
    assert next(r for r in backlog[DAYS[0]][1] if r["key"] == "broken.png")["status"] == "rejected"
    costs = storage.storage_path(f"file://{root}/costs")
    entries = ledger.query(costs, "SELECT kind, key, images FROM ledger ORDER BY key")
    assert [(e["kind"], e["key"], e["images"]) for e in entries] == [
        ("classification", d, 6 if d == DAYS[0] else 5) for d in DAYS
    ]
    # A rerun carries every final row over and asks again only what may change: `invalid` (an untrained model's
    # garbage) and `failed` rows, as the nightly path does.
    rerun = local.dags_test("classify_backlog", CONF, logical_date=LOGICAL_DATE)
    assert rerun.succeeded, rerun.output[-6000:]
    for day, (_, rows) in backlog.items():
        again = sum(row["status"] in ("invalid", "failed") for row in rows)
        assert f"dt={day}: {len(rows)} images, {len(rows) - again} carried over, {again} to classify" in rerun.output

    for day in DAYS:  # the endpoint path, asked again for every image, commits the same rows
        nightly = local.dags_test(
            "classify_images", {"reclassify": True, "quality": {"on_violation": "warn"}}, logical_date=day
        )
        assert nightly.succeeded, nightly.output[-6000:]
        manifest, rows = committed(root, day)
        assert manifest["classified"] == len(rows)
        assert stable(rows) == stable(backlog[day][1])
        assert manifest["stats"] == backlog[day][0]["stats"]


# --- SageMaker backend on moto ------------------------------------------------------------------------------------
HOTEL_ANSWER = "this is a photo of 3."
SAME = ("ModelName", "BatchStrategy", "MaxConcurrentTransforms", "MaxPayloadInMB", "ModelClientConfig")
SAME += ("DataProcessing",)


def sagemaker_record(storage_uri: str) -> EndpointRecord:
    record = replace(
        endpoint_record("", model_version="v1"),
        backend="sagemaker",
        transport="sagemaker_runtime",
        url=None,
        instance_type="ml.g5.xlarge",
        price_region="us-east-1",
        config_name="llava-classifier-v1-0123abcd",
    )
    storage.write_json(storage.storage_path(f"{storage_uri}/serving/endpoint.json", "aws_default"), record.to_dict())
    return record


def prepare_outputs(
    moto: Moto, request: dict, shape=lambda key, answer: {"key": key, "SageMakerOutput": answer}
) -> int:
    """What Batch Transform would write for a job: `<file>.out`, one line per record (`shape`), in input order."""
    s3 = moto.boto3_client("s3")
    source = request["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"].removeprefix(f"s3://{moto.bucket}/")
    output = request["TransformOutput"]["S3OutputPath"].removeprefix(f"s3://{moto.bucket}/")
    lines = 0
    for obj in s3.list_objects_v2(Bucket=moto.bucket, Prefix=source)["Contents"]:
        records = s3.get_object(Bucket=moto.bucket, Key=obj["Key"])["Body"].read().splitlines()
        answer = {
            "choices": [{"message": {"role": "assistant", "content": HOTEL_ANSWER}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 40, "completion_tokens": 6},
        }
        body = "".join(json.dumps(shape(json.loads(r)["key"], answer)) + "\n" for r in records)
        name = obj["Key"].rsplit("/", 1)[1]
        s3.put_object(Bucket=moto.bucket, Key=f"{output.rstrip('/')}/{name}.out", Body=body.encode())
        lines += len(records)
    return lines


def test_sagemaker_backlog_creates_one_job_per_chunk_once_and_joins_prepared_outputs(
    sagemaker_airflow: AirflowRunner, moto: Moto
) -> None:
    storage_uri = sagemaker_airflow.env["PIPELINE_STORAGE_URI"]
    record = sagemaker_record(storage_uri)
    write_incoming(storage.storage_path(f"{storage_uri}/incoming", "aws_default"), DAYS, list(range(15)))
    sm = moto.boto3_client("sagemaker")

    # moto completes the canary at once and writes no `.out`: the canary fails and no large job is created.
    failed = sagemaker_airflow.dags_test("classify_backlog", CONF, logical_date=LOGICAL_DATE)
    assert not failed.succeeded, failed.output[-6000:]
    requests = ast.literal_eval(failed.xcom("transform_requests"))
    [canary_job] = sm.list_transform_jobs()["TransformJobSummaries"]  # CreateTransformJob: the canary only
    assert canary_job["TransformJobName"] == canary.canary_name(requests[0]["TransformJobName"])
    assert f"canary {canary_job['TransformJobName']} completed but wrote no " in failed.output
    canary_request = sm.describe_transform_job(TransformJobName=canary_job["TransformJobName"])
    assert canary_request["ModelName"] == requests[0]["ModelName"]
    assert canary_request["TransformResources"] == {"InstanceType": "ml.g5.xlarge", "InstanceCount": 1}
    assert {k: canary_request[k] for k in SAME} == {k: requests[0][k] for k in SAME}
    # The canary's `.out` joined into another shape (arrays): the same loud failure, still no large job.
    prepare_outputs(moto, canary_request, shape=lambda key, answer: [key, answer])
    shaped = sagemaker_airflow.dags_test("classify_backlog", CONF, logical_date=LOGICAL_DATE)
    assert not shaped.succeeded, shaped.output[-6000:]
    assert "none of its 2 line(s) has the joined shape" in shaped.output and "line 1: a JSON list" in shaped.output
    assert len(sm.list_transform_jobs()["TransformJobSummaries"]) == 1
    assert prepare_outputs(moto, canary_request) == 2  # the first file holds 2 images

    first = sagemaker_airflow.dags_test("classify_backlog", CONF, logical_date=LOGICAL_DATE)
    assert "Attaching to transform job" in first.output and "passed: {'ok': 2}" in first.output
    assert ast.literal_eval(first.xcom("transform_requests")) == requests
    jobs = large_jobs(sm, canary_job)
    assert len(requests) == len(jobs) == 5  # 3 days x files of 2, 2, 1 images, in jobs of <= 4 images
    assert sorted(j["TransformJobName"] for j in jobs) == sorted(r["TransformJobName"] for r in requests)
    for request in requests:
        job = sm.describe_transform_job(TransformJobName=request["TransformJobName"])
        assert job["ModelName"] == record.config_name  # the model deploy_endpoint created
        assert (job["BatchStrategy"], job["MaxConcurrentTransforms"], job["MaxPayloadInMB"]) == ("SingleRecord", 64, 1)
        assert job["ModelClientConfig"] == {"InvocationsTimeoutInSeconds": 600, "InvocationsMaxRetries": 1}
        assert job["TransformInput"]["SplitType"] == "Line"
        assert job["TransformInput"]["ContentType"] == "application/jsonlines"
        source = job["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"]
        assert source.startswith(f"s3://{moto.bucket}/pipeline/backlog/") and source.endswith("/input/")
        assert job["TransformOutput"]["S3OutputPath"] == source.removesuffix("input/") + "output/"
        assert job["TransformOutput"]["AssembleWith"] == "Line"
        assert job["TransformOutput"]["Accept"] == "application/jsonlines"
        assert job["DataProcessing"] == {
            "InputFilter": "$.body",
            "JoinSource": "Input",
            "OutputFilter": "$['key','SageMakerOutput']",
        }
        assert job["TransformResources"] == {"InstanceType": "ml.g5.xlarge", "InstanceCount": 1}
    # moto completes jobs at once and writes nothing: every image becomes a failed row that says why.
    assert first.succeeded, first.output[-6000:]
    manifest, rows = committed_s3(storage_uri, DAYS[0])
    assert manifest["stats"]["statuses"]["failed"] == manifest["rows"] == len(rows) == 5
    assert all(row["reason"].startswith("no answer: batch transform wrote no ") for row in rows)

    created = {j["TransformJobName"]: j["CreationTime"] for j in jobs}
    lines = sum(prepare_outputs(moto, request) for request in requests)
    assert lines == 15
    second = sagemaker_airflow.dags_test("classify_backlog", CONF, logical_date=LOGICAL_DATE)  # the same run again
    assert second.succeeded, second.output[-6000:]
    assert second.output.count("Attaching to transform job") == 6  # 5 jobs and the canary
    again = large_jobs(sm, canary_job)
    assert {j["TransformJobName"]: j["CreationTime"] for j in again} == created  # none created twice
    committed_lines = [line for line in second.output.splitlines() if "rows {'ok'" in line]
    assert sum("5 rows {'ok': 5," in line for line in committed_lines) == 3, "\n".join(committed_lines)
    storage.storage_path(storage_uri, "aws_default").fs.invalidate_cache()  # this process read the first commit
    for day in DAYS:
        manifest, rows = committed_s3(storage_uri, day)
        assert manifest["rows"] == len(rows) == 5 and manifest["stats"]["statuses"]["ok"] == 5, (
            f"{manifest['stats']} {rows[0]['status']} {rows[0]['reason']} {rows[0]['raw_answer']}"
        )
        assert {row["label"] for row in rows} == {"3"} and manifest["model_version"] == "v1"
        assert sorted(row["key"] for row in rows) == [row["key"] for row in rows]


def large_jobs(sm, canary_job: dict) -> list[dict]:
    return [
        j
        for j in sm.list_transform_jobs()["TransformJobSummaries"]
        if j["TransformJobName"] != canary_job["TransformJobName"]
    ]


def committed_s3(storage_uri: str, day: str) -> tuple[dict, list[dict]]:
    partition = predictions.partition_dir(storage.storage_path(f"{storage_uri}/predictions", "aws_default"), day)
    return predictions.read_success(partition), predictions.read_partition(partition).to_pylist()
