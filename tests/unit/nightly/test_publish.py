"""Issue 9, defect 6: one writer per partition (the publish lease) and one active DagRun per dt (the claim)."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowFailException

from tasks.common.storage import create_exclusive, storage_path
from tasks.nightly import partitions, predictions
from tasks.nightly.predictions import LEASE, PublishConflict, publish, read_partition, read_success


def rows_table(keys: list[str]):
    import pyarrow as pa

    rows = [{"key": key, "status": "ok", "label": "3", "attempts": 1} for key in sorted(keys)]
    return pa.Table.from_pylist(rows, schema=predictions.row_schema())


ROUNDS = 60


def stage(partition, token: str) -> list[dict]:
    """A run's staged files, as its shards would have written them."""
    files = []
    for i in range(3):
        path = f"{predictions.RUN_PREFIX}{token}/shard-{i:05d}.parquet"
        predictions.write_table(partition / path, rows_table([f"{token}-{i}-{k}.png" for k in range(2)]))
        files.append({"path": path, "rows": 2})
    return files


def test_concurrent_publishes_of_one_dt_never_both_succeed_nor_list_a_missing_file(tmp_path: Path) -> None:
    partition = storage_path(f"file://{tmp_path}/predictions/dt=2026-11-02")
    winners = []
    for round_ in range(ROUNDS):
        tokens = [f"{round_:03d}-a", f"{round_:03d}-b"]
        staged = {token: stage(partition, token) for token in tokens}
        barrier = threading.Barrier(len(tokens))

        def attempt(token: str, barrier=barrier, staged=staged) -> bool:
            barrier.wait()
            try:
                publish(partition, token, staged[token], {"rows": 6})
            except PublishConflict:
                return False
            return True

        with ThreadPoolExecutor(len(tokens)) as pool:
            results = dict(zip(tokens, pool.map(attempt, tokens), strict=True))
        assert sum(results.values()) == 1, (round_, results)  # exactly one wins, the other fails loudly
        manifest = read_success(partition)
        assert manifest["run"] == next(t for t, won in results.items() if won)
        assert all((partition / f["path"]).exists() for f in manifest["files"]), round_
        assert read_partition(partition).num_rows == 6
        assert not (partition / LEASE).exists()  # released by the winner
        winners.append(manifest["run"])
    assert len(winners) == ROUNDS


def test_a_held_lease_refuses_and_an_expired_one_is_broken(tmp_path: Path) -> None:
    partition = storage_path(f"file://{tmp_path}/dt=2026-11-02")
    files = stage(partition, "mine")
    lease = partition / LEASE
    create_exclusive(lease, json.dumps({"run": "other", "expires_at": time.time() + 60}).encode())
    with pytest.raises(PublishConflict, match="being published by run other") as info:
        publish(partition, "mine", files, {})
    assert isinstance(info.value, AirflowFailException) and read_success(partition) is None
    lease.write_bytes(json.dumps({"run": "killed", "expires_at": time.time() - 1}).encode())
    assert publish(partition, "mine", files, {})["run"] == "mine"
    assert not lease.exists()


def test_exclusive_create_is_exclusive(tmp_path: Path) -> None:
    path = storage_path(f"file://{tmp_path}/x/_LEASE")
    assert create_exclusive(path, b"first") and not create_exclusive(path, b"second")
    assert path.read_bytes() == b"first" and [p.name for p in path.parent.iterdir()] == ["_LEASE"]


def test_one_active_dagrun_per_dt(tmp_path: Path) -> None:
    partition = storage_path(f"file://{tmp_path}/dt=2026-11-02")
    states = {"scheduled__2026-11-03": "running", "backfill__2026-11-02": "queued"}
    partitions.claim_dt(partition, "scheduled__2026-11-03", states.__getitem__)
    partitions.claim_dt(partition, "scheduled__2026-11-03", states.__getitem__)  # a retry/clear of the same run
    with pytest.raises(AirflowFailException, match="being processed by DagRun scheduled__2026-11-03"):
        partitions.claim_dt(partition, "backfill__2026-11-02", states.__getitem__)
    states["scheduled__2026-11-03"] = "success"
    partitions.claim_dt(partition, "backfill__2026-11-02", states.__getitem__)  # the holder finished
    with pytest.raises(AirflowFailException, match="backfill__2026-11-02 \\(queued\\)"):
        partitions.claim_dt(partition, "manual__x", states.__getitem__)
