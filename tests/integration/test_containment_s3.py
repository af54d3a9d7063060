"""Issue 9 on `s3://` (moto_server): another bucket is never read, written or created; the publish lease is a
conditional PUT (`If-None-Match: *`)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from tasks.common.settings import load_settings
from tasks.common.storage import ContainmentError, create_exclusive, storage_path
from tasks.curation.curate import CurationOptions, curate_uri
from tasks.model.taxonomy import load_taxonomy
from tasks.nightly import predictions
from tests.integration.conftest import Moto


def buckets(moto: Moto) -> list[str]:
    return sorted(b["Name"] for b in moto.boto3_client("s3").list_buckets()["Buckets"])


@pytest.mark.parametrize(
    ("raw_uri", "dataset_uri", "param"),
    [
        ("s3://other-bucket/raw", "s3://{bucket}/pipeline/datasets/x", "raw_uri"),
        ("s3://{bucket}/pipeline/raw/../../elsewhere", "s3://{bucket}/pipeline/datasets/x", "raw_uri"),
        ("s3://{bucket}/pipeline/raw", "s3://missing-bucket/datasets/x", "dataset_uri"),
        ("s3://{bucket}/pipeline/raw", "s3://{bucket}/pipeline", "dataset_uri"),
        ("s3://{bucket}/pipeline/raw", "s3://{bucket}/pipeline/datasets/../models", "dataset_uri"),
    ],
)
def test_params_outside_the_root_bucket_are_refused_before_anything_is_touched(moto, raw_uri, dataset_uri, param):
    s3 = moto.boto3_client("s3")
    s3.create_bucket(Bucket="other-bucket")
    s3.put_object(Bucket="other-bucket", Key="raw/3/a.png", Body=b"not yours")
    s3.put_object(Bucket=moto.bucket, Key="pipeline/models/v1/weights.bin", Body=b"weights")
    before = buckets(moto)
    settings = load_settings({"PIPELINE_STORAGE_URI": f"s3://{moto.bucket}/pipeline"})

    with pytest.raises(ContainmentError, match=f"param {param}"):
        curate_uri(
            raw_uri.format(bucket=moto.bucket),
            dataset_uri.format(bucket=moto.bucket),
            load_taxonomy("digits"),
            CurationOptions(),
            settings=settings,
        )

    assert buckets(moto) == before  # no bucket created
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=moto.bucket).get("Contents", [])]
    assert keys == ["pipeline/models/v1/weights.bin"]  # nothing written or deleted
    assert s3.get_object(Bucket="other-bucket", Key="raw/3/a.png")["Body"].read() == b"not yours"


def test_the_lease_is_a_conditional_put_and_concurrent_publishes_have_one_winner(moto: Moto) -> None:
    partition = storage_path(f"s3://{moto.bucket}/pipeline/predictions/dt=2026-11-02", "aws_default")
    lease = partition / predictions.LEASE
    assert create_exclusive(lease, b"first") and not create_exclusive(lease, b"second")
    assert lease.read_bytes() == b"first"
    lease.unlink()

    for round_ in range(10):
        tokens = [f"{round_:02d}-a", f"{round_:02d}-b"]
        staged = {}
        for token in tokens:
            path = f"{predictions.RUN_PREFIX}{token}/shard-00000.parquet"
            predictions.write_table(partition / path, predictions.row_schema().empty_table())
            staged[token] = [{"path": path, "rows": 0}]
        barrier = threading.Barrier(2)

        def attempt(token: str, barrier=barrier, staged=staged) -> bool:
            barrier.wait()
            try:
                predictions.publish(partition, token, staged[token], {})
            except predictions.PublishConflict:
                return False
            return True

        with ThreadPoolExecutor(2) as pool:
            assert sum(pool.map(attempt, tokens)) == 1, round_
        manifest = predictions.read_success(partition)
        assert all((partition / f["path"]).exists() for f in manifest["files"])
        assert not lease.exists()
