"""One writer per partition (the publish lease) and one active DagRun per dt (the claim): compare-and-swap leases
(tasks.common.leases), raced by tests/race_harness.py on the local backend (issue 9 defect 6, issue 18 items 2-3)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowFailException

from tasks.common import leases
from tasks.common.storage import create_exclusive, read_versioned, replace_if, storage_path
from tasks.nightly import partitions, predictions
from tasks.nightly.predictions import LEASE, PublishConflict, publish, read_success
from tests.race_harness import race, rows_table

ROUNDS = 500  # each round a fresh race; the old code lost 2-3 of 500 (publish) and 74 of 500 (claim), stale


def stage(partition, token: str) -> list[dict]:
    path = f"run={token}/shard-00000.parquet"
    predictions.write_table(partition / path, rows_table([f"{token}-a", f"{token}-b"]))
    return [{"path": path, "rows": 2}]


@pytest.mark.parametrize("kind", ["publish", "claim"])
@pytest.mark.parametrize("stale", [False, True], ids=["fresh", "stale"])
def test_threads_racing_one_dt_have_one_winner_and_losers_say_who_won(tmp_path: Path, kind: str, stale: bool):
    result = race(kind, f"file://{tmp_path}/predictions/dt=2026-11-02", rounds=ROUNDS, stale=stale)
    assert (result["double_winners"], result["no_winner"], result["raw_exceptions"], result["bad_partitions"]) == (
        0,
        0,
        0,
        0,
    ), result["examples"]


@pytest.mark.parametrize("kind", ["publish", "claim"])
def test_processes_racing_a_stale_lease_have_one_winner(tmp_path: Path, kind: str) -> None:
    result = race(kind, f"file://{tmp_path}/predictions/dt=2026-11-02", rounds=ROUNDS, stale=True, mode="processes")
    assert (result["double_winners"], result["no_winner"], result["raw_exceptions"], result["bad_partitions"]) == (
        0,
        0,
        0,
        0,
    ), result["examples"]


def test_the_harness_catches_a_lease_that_is_not_compare_and_swap(tmp_path: Path, monkeypatch) -> None:
    """The old takeover (read, delete, create) under the same harness: it must fail, or the harness proves nothing."""
    from tasks.common import storage

    def unconditional(path, data, version):  # overwrite whatever is there now, like the old code did
        time.sleep(0.001)
        path.write_bytes(data)
        return storage.read_versioned(path).version

    monkeypatch.setattr(storage, "replace_if", unconditional)
    result = race("claim", f"file://{tmp_path}/predictions/dt=2026-11-02", rounds=100, stale=True)
    assert result["double_winners"] > 0


def test_a_held_lease_refuses_naming_the_holder_when_it_expires_and_how_to_clear_it(tmp_path: Path) -> None:
    partition = storage_path(f"file://{tmp_path}/dt=2026-11-02")
    files = stage(partition, "mine")
    lease = partition / LEASE
    create_exclusive(lease, leases.Holder(run="other", expires_at=time.time() + 60).encode())
    with pytest.raises(PublishConflict, match="being published by run other") as info:
        publish(partition, "mine", files, {})
    assert isinstance(info.value, AirflowFailException) and read_success(partition) is None
    assert "expires at" in str(info.value) and "delete the lease file" in str(info.value)
    lease.write_bytes(json.dumps({"run": "killed", "expires_at": time.time() - 1}).encode())  # the old format
    assert publish(partition, "mine", files, {})["run"] == "mine"
    assert not lease.exists()  # released by its holder


def test_release_deletes_only_its_own_lease_and_a_lost_lease_fails_naming_the_new_holder(tmp_path: Path) -> None:
    path = storage_path(f"file://{tmp_path}/dt=2026-11-02/_LEASE")
    mine = leases.acquire(
        path,
        leases.Holder(run="A", expires_at=time.time() + 60),
        stale=leases.expired,
        conflict=PublishConflict,
        explain=lambda held: held.run,
    )
    current = read_versioned(path)
    assert replace_if(path, leases.Holder(run="B", expires_at=time.time() + 60).encode(), current.version)
    assert not mine.release()  # B's lease stays
    assert leases.Holder.decode(path.read_bytes()).run == "B"
    with pytest.raises(PublishConflict, match=r"lost the lease .* now held by run B"):
        mine.renew(60)


def test_a_holder_renews_while_it_works_so_a_slow_publish_is_never_taken_over(tmp_path: Path) -> None:
    path = storage_path(f"file://{tmp_path}/dt=2026-11-02/_LEASE")
    lease = leases.acquire(
        path,
        leases.Holder(run="slow", expires_at=time.time() + 0.3),
        stale=leases.expired,
        conflict=PublishConflict,
        explain=lambda held: f"held by {held.run}",
    )
    with leases.held(lease, ttl_s=0.3, every_s=0.05):
        time.sleep(0.8)  # well past the first expiry
        with pytest.raises(PublishConflict, match="held by slow"):
            leases.acquire(
                path,
                leases.Holder(run="late"),
                stale=leases.expired,
                conflict=PublishConflict,
                explain=lambda held: f"held by {held.run}",
            )
    assert not path.exists()


TI = {
    "dag_id": "classify_images",
    "run_id": "scheduled__2026-11-02",
    "task_id": "publish_partition",
    "map_index": -1,
    "try_number": 1,
}


@pytest.mark.parametrize(
    ("owner", "live", "taken_over"),
    [
        (TI, 1, True),  # an earlier try of this very task instance: it runs one try at a time
        ({**TI, "try_number": 2}, 1, True),  # the same try, a new DagRun of the same run_id (dags test again)
        ({**TI, "run_id": "backfill__2026-11-02"}, 0, True),  # another run's task, no longer queued or running
        ({**TI, "run_id": "backfill__2026-11-02"}, 1, False),  # still running: wait for it
        ({}, 0, False),  # no owner recorded: only its expiry frees it
    ],
)
def test_a_lease_whose_owner_is_provably_gone_is_taken_over_at_once(tmp_path, owner, live, taken_over) -> None:
    path = storage_path(f"file://{tmp_path}/dt=2026-11-02/_LEASE")
    create_exclusive(path, leases.Holder(run="killed", owner=owner, expires_at=time.time() + 60).encode())
    asked = []
    judge = leases.owner_gone({**TI, "try_number": 2}, lambda o: asked.append(o) or live)
    me = leases.Holder(run="rerun", owner={**TI, "try_number": 2})
    if taken_over:
        leases.acquire(path, me, stale=judge, conflict=PublishConflict, explain=str)
        assert leases.Holder.decode(path.read_bytes()).run == "rerun"
    else:
        with pytest.raises(PublishConflict):
            leases.acquire(path, me, stale=judge, conflict=PublishConflict, explain=str)
    assert asked == ([owner] if owner and owner["run_id"] != TI["run_id"] else [])


def test_airflow_not_answering_is_no_proof_the_owner_is_gone(tmp_path: Path) -> None:
    def unreachable(owner):
        raise ConnectionError("api server down")

    held = leases.Holder(run="x", owner={**TI, "run_id": "other"}, expires_at=time.time() + 60)
    assert leases.owner_gone(TI, unreachable)(held) is None


def test_exclusive_create_is_exclusive_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = storage_path(f"file://{tmp_path}/x/_LEASE")
    assert create_exclusive(path, b"first") and create_exclusive(path, b"second") is None
    assert path.read_bytes() == b"first"
    assert sorted(p.name for p in path.parent.iterdir()) == ["._LEASE.lock", "_LEASE"]  # the flock's file


def test_exclusive_create_has_one_winner_among_threads(tmp_path: Path) -> None:
    path = storage_path(f"file://{tmp_path}/x/_LEASE")
    barrier = threading.Barrier(8)
    won = []

    def create(i: int) -> None:
        barrier.wait()
        won.append(create_exclusive(path, str(i).encode()))

    threads = [threading.Thread(target=create, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(v is not None for v in won) == 1


def test_one_active_dagrun_per_dt(tmp_path: Path) -> None:
    partition = storage_path(f"file://{tmp_path}/dt=2026-11-02")
    states = {"scheduled__2026-11-03": "running", "backfill__2026-11-02": "queued"}
    partitions.claim_dt(partition, "scheduled__2026-11-03", states.__getitem__)
    partitions.claim_dt(partition, "scheduled__2026-11-03", states.__getitem__)  # a retry/clear of the same run
    with pytest.raises(PublishConflict, match="being processed by DagRun scheduled__2026-11-03 \\(running\\)"):
        partitions.claim_dt(partition, "backfill__2026-11-02", states.__getitem__)
    states["scheduled__2026-11-03"] = "success"
    partitions.claim_dt(partition, "backfill__2026-11-02", states.__getitem__)  # the holder finished
    with pytest.raises(PublishConflict, match="backfill__2026-11-02 \\(queued\\)"):
        partitions.claim_dt(partition, "manual__x", states.__getitem__)
