"""Leases on `s3://` (moto_server): the conditional writes and deletes they stand on, as boto3 and moto implement
them, and the race harness against them (issue 18: 500 rounds of each case in the closing note; bounded here)."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from tasks.common import leases, storage
from tasks.nightly.predictions import PublishConflict
from tests.integration.conftest import Moto
from tests.race_harness import race

KEY = "pipeline/predictions/dt=2026-11-02/_LEASE"


def code(exc: pytest.ExceptionInfo[ClientError]) -> tuple[str, int]:
    response = exc.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]


def test_moto_implements_the_conditional_writes_and_deletes_a_lease_needs(moto: Moto) -> None:
    """PutObject If-None-Match: * and If-Match: <ETag>, DeleteObject If-Match: <ETag> — 412 when the condition
    fails, as the S3 API reference documents (see tasks.common.storage)."""
    s3 = moto.boto3_client("s3")
    first = s3.put_object(Bucket=moto.bucket, Key=KEY, Body=b"one", IfNoneMatch="*")["ETag"]
    with pytest.raises(ClientError) as exists:
        s3.put_object(Bucket=moto.bucket, Key=KEY, Body=b"two", IfNoneMatch="*")
    assert code(exists) == ("PreconditionFailed", 412)
    second = s3.put_object(Bucket=moto.bucket, Key=KEY, Body=b"two", IfMatch=first)["ETag"]
    with pytest.raises(ClientError) as stale:
        s3.put_object(Bucket=moto.bucket, Key=KEY, Body=b"three", IfMatch=first)
    assert code(stale) == ("PreconditionFailed", 412)
    with pytest.raises(ClientError) as not_mine:
        s3.delete_object(Bucket=moto.bucket, Key=KEY, IfMatch=first)
    assert code(not_mine) == ("PreconditionFailed", 412)
    assert s3.get_object(Bucket=moto.bucket, Key=KEY)["Body"].read() == b"two"
    s3.delete_object(Bucket=moto.bucket, Key=KEY, IfMatch=second)
    with pytest.raises(ClientError) as gone:
        s3.delete_object(Bucket=moto.bucket, Key=KEY, IfMatch=second)
    assert code(gone)[1] == 404


def test_the_storage_primitives_compare_and_swap_on_s3(moto: Moto) -> None:
    path = storage.storage_path(f"s3://{moto.bucket}/{KEY}", "aws_default")
    assert storage.read_versioned(path) is None
    v1 = storage.create_exclusive(path, b"one")
    assert v1 and storage.create_exclusive(path, b"two") is None
    assert storage.read_versioned(path) == storage.Versioned(b"one", v1)
    assert storage.replace_if(path, b"two", "0" * 32) is None
    v2 = storage.replace_if(path, b"two", v1)
    assert v2 and not storage.delete_if(path, v1) and storage.read_versioned(path).data == b"two"
    assert storage.delete_if(path, v2) and storage.read_versioned(path) is None
    assert storage.replace_if(path, b"x", v2) is None and not storage.delete_if(path, v2)


def test_a_lost_lease_is_never_released_by_its_old_holder_on_s3(moto: Moto) -> None:
    path = storage.storage_path(f"s3://{moto.bucket}/{KEY}", "aws_default")
    mine = leases.acquire(
        path, leases.Holder(run="A", expires_at=0.0), stale=leases.expired, conflict=PublishConflict, explain=str
    )
    # A's lease has expired: B takes it over
    theirs = leases.acquire(path, leases.Holder(run="B"), stale=leases.expired, conflict=PublishConflict, explain=str)
    assert not mine.release() and leases.Holder.decode(path.read_bytes()).run == "B"
    with pytest.raises(PublishConflict, match="now held by run B"):
        mine.renew(60)
    assert theirs.release() and storage.read_versioned(path) is None


@pytest.mark.parametrize(("kind", "rounds"), [("publish", 40), ("claim", 100)])
@pytest.mark.parametrize("stale", [False, True], ids=["fresh", "stale"])
def test_racing_publishers_and_claims_on_s3_have_one_winner(moto: Moto, kind: str, rounds: int, stale: bool):
    result = race(
        kind,
        f"s3://{moto.bucket}/pipeline/predictions/dt=2026-11-02",
        rounds=rounds,
        stale=stale,
        conn_id="aws_default",
    )
    assert (result["double_winners"], result["no_winner"], result["raw_exceptions"], result["bad_partitions"]) == (
        0,
        0,
        0,
        0,
    ), result["examples"]
