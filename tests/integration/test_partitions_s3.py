"""Planning a partition on `s3://` (moto_server): the listing is streamed page by page, versions are ETags."""

from __future__ import annotations

from tasks.common.storage import storage_path
from tasks.nightly.partitions import iter_files, plan_partition, read_shard
from tests.integration.conftest import Moto

PAGE = 1000  # ListObjectsV2 returns at most this many keys per page


def test_an_s3_partition_is_listed_across_pages_and_sharded(moto: Moto) -> None:
    s3 = moto.boto3_client("s3")
    prefix = "pipeline/incoming/dt=2026-11-02"
    keys = [f"{i % 7}/img-{i:05d}.jpg" for i in range(PAGE + 5)] + [".DS_Store"]
    for key in keys:
        s3.put_object(Bucket=moto.bucket, Key=f"{prefix}/{key}", Body=key.encode())
    s3.put_object(Bucket=moto.bucket, Key="pipeline/incoming/dt=2026-11-03/other.jpg", Body=b"next day")
    incoming = storage_path(f"s3://{moto.bucket}/{prefix}", "aws_default")

    listed = {key: (size, version) for key, size, version, _ in iter_files(incoming)}
    assert set(listed) == set(keys)
    etag = s3.head_object(Bucket=moto.bucket, Key=f"{prefix}/{keys[0]}")["ETag"].strip('"')
    assert listed[keys[0]] == (len(keys[0]), etag)

    partition = storage_path(f"s3://{moto.bucket}/pipeline/predictions/dt=2026-11-02", "aws_default")
    plan = plan_partition(incoming, partition, dt="2026-11-02", model_version="v1", shard_size=400)
    assert (plan.listed, plan.ignored, plan.to_classify, len(plan.shards)) == (PAGE + 6, 1, PAGE + 5, 3)
    planned = [key for shard in plan.shards for key, *_ in read_shard(shard, "aws_default")]
    assert planned == sorted(keys[:-1])
