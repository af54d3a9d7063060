"""Crash-safe reruns (issue 18 item 4), with real processes killed by SIGKILL: a publisher killed while it holds
`_LEASE` does not block the day (its rerun takes the lease over at once when its task instance is provably gone,
and otherwise says when it expires), and a shard killed after 20 of 80 answers costs its rerun 60 requests, not 80."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.endpoints import endpoint_record, stable
from tasks.common.storage import storage_path
from tasks.nightly import predictions, steps
from tasks.nightly.classification import PartitionJob, classify_shard, collect_shards, publish
from tasks.nightly.partitions import plan_partition
from tasks.nightly.predictions import LEASE, SUCCESS, PublishConflict
from tests.conftest import REPO_ROOT
from tests.fault_server import FAST, ScriptedHandler, ScriptedServer, sized_image

DT = "2026-11-02"
IMAGES = 80
KILL_AFTER = 20
PATIENT = {**FAST, "timeout_s": 20.0}  # every request here is answered: a busy machine must not make rows `failed`


@dataclass
class FakeTI:
    """The Task SDK task instance, as far as the publish lease asks it: its identity and Airflow's count of live
    instances of another task."""

    try_number: int = 1
    run_id: str = "scheduled__2026-11-02"
    live: int = 0
    dag_id: str = "classify_images"
    task_id: str = "publish_partition"
    map_index: int = -1

    def get_ti_count(self, **query) -> int:
        return self.live


class GatedHandler(ScriptedHandler):
    """Answers the first `limit` requests; later ones wait until the gate opens (a held request, as when a
    process is killed in the middle of a shard)."""

    def do_POST(self) -> None:
        srv: GatedServer = self.server  # type: ignore[assignment]
        with srv.lock:
            srv.requests += 1
            held = srv.requests > srv.limit
        if held:
            srv.gate.wait(30)
        super().do_POST()


class GatedServer(ScriptedServer):
    def __init__(self, limit: int) -> None:
        super().__init__()
        self.RequestHandlerClass = GatedHandler
        self.limit, self.requests, self.gate = limit, 0, threading.Event()

    def reopen(self) -> None:
        with self.lock:
            self.requests, self.limit = 0, 10**9
        self.gate.set()


@pytest.fixture
def server() -> Iterator[GatedServer]:
    srv = GatedServer(KILL_AFTER)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield srv
    srv.gate.set()
    srv.shutdown()
    srv.server_close()


def folder(path: Path) -> str:
    return f"file://{path}"  # Path.as_uri() would escape the "=" of dt=…


@pytest.fixture
def incoming(tmp_path: Path) -> Path:
    path = tmp_path / "incoming" / f"dt={DT}"
    path.mkdir(parents=True)
    for i in range(IMAGES):  # width 40: the scripted server answers "ok" at once
        (path / f"img-{i:02d}.png").write_bytes(sized_image(40, 16 + i % 48))
    return path


def job_for(incoming: Path, out: Path, plan, url: str) -> PartitionJob:
    return PartitionJob(
        dt=DT,
        incoming_uri=folder(incoming),
        partition_uri=folder(out),
        run_token=plan.run_token,
        record=endpoint_record(url, max_image_tokens=None),
        concurrency=4,
        conn_id="aws_default",
        client_options=PATIENT,
        max_consecutive_failures=1000,
    )


def plan_for(incoming: Path, out: Path):
    return plan_partition(
        storage_path(folder(incoming)), storage_path(folder(out)), dt=DT, model_version="v1", shard_size=IMAGES
    )


def child(code: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env, cwd=REPO_ROOT)


def wait_for(condition, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


_CLASSIFY = """
import json, sys
from tasks.nightly import classification
from tasks.nightly.classification import PartitionJob, classify_shard
from tasks.nightly.partitions import Shard
classification.FLUSH_S = 0.2
classify_shard(PartitionJob.from_dict(json.loads(sys.argv[1])), Shard(**json.loads(sys.argv[2])))
"""


def flushed_rows(out: Path) -> int:
    import pyarrow.parquet as pq

    return sum(pq.read_metadata(p).num_rows for p in out.glob("run=*/shard-*.answers/part-*.parquet"))


def kill_after_answers(incoming: Path, out: Path, server: GatedServer):
    """Plan, then classify the one shard in a child process; SIGKILL it once its first 20 answers are flushed
    (the server holds every later request). Returns the plan and its job."""
    plan = plan_for(incoming, out)
    job = job_for(incoming, out, plan, server.url)
    proc = child(_CLASSIFY, json.dumps(job.to_dict()), json.dumps(plan.shards[0].__dict__))
    try:
        wait_for(lambda: flushed_rows(out) == KILL_AFTER, "20 flushed answers")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    server.reopen()
    return plan, job


def clean_rows(tmp_path: Path, incoming: Path, url: str) -> list[dict]:
    out = tmp_path / "clean" / f"dt={DT}"
    plan = plan_for(incoming, out)
    job = job_for(incoming, out, plan, url)
    publish(job, plan, collect_shards(plan, [classify_shard(job, plan.shards[0])]), quality={})
    return stable(predictions.read_partition(storage_path(folder(out))).sort_by("key").to_pylist())


def test_a_shard_retried_after_a_kill_sends_only_the_images_without_an_answer(tmp_path, incoming, server):
    out = tmp_path / "predictions" / f"dt={DT}"
    plan, job = kill_after_answers(incoming, out, server)

    result = classify_shard(job, plan.shards[0])  # the task's retry: same run, same shard

    print(f"retry after a kill at {KILL_AFTER} of {IMAGES} answers: {server.requests} requests")
    assert server.requests == IMAGES - KILL_AFTER == 60
    publish(job, plan, collect_shards(plan, [result]), quality={})
    rows = stable(predictions.read_partition(storage_path(folder(out))).sort_by("key").to_pylist())
    assert rows == clean_rows(tmp_path, incoming, server.url) and len(rows) == IMAGES
    assert not list(out.glob("run=*/*.answers"))  # folded into the shard's file


def test_a_new_run_after_a_kill_carries_the_answers_already_paid_for(tmp_path, incoming, server):
    out = tmp_path / "predictions" / f"dt={DT}"
    kill_after_answers(incoming, out, server)

    plan = plan_for(incoming, out)  # a new DagRun (or `dags test` again): a new run token
    assert (plan.carried, plan.to_classify) == (KILL_AFTER, IMAGES - KILL_AFTER)
    job = job_for(incoming, out, plan, server.url)
    publish(job, plan, collect_shards(plan, [classify_shard(job, plan.shards[0])]), quality={})

    print(f"new run after a kill at {KILL_AFTER} of {IMAGES} answers: {server.requests} requests")
    assert server.requests == 60
    rows = stable(predictions.read_partition(storage_path(folder(out))).sort_by("key").to_pylist())
    assert rows == clean_rows(tmp_path, incoming, server.url)
    assert [p.name for p in out.glob("run=*")] == [f"run={plan.run_token}"]  # the killed run's files are gone


_PUBLISH = """
import json, sys, time
from tasks.common import storage
from tasks.nightly import steps
from tests.unit.nightly.test_resume import FakeTI
write_json = storage.write_json

def stall_before_commit(path, doc):  # the kill lands while _LEASE is held, before _SUCCESS exists
    if path.name == "_SUCCESS":
        time.sleep(600)
    write_json(path, doc)

storage.write_json = stall_before_commit
steps.publish(json.loads(sys.argv[1]), json.loads(sys.argv[2]), {"passed": True}, FakeTI(try_number=1))
"""


def staged_run(tmp_path: Path, incoming: Path, url: str) -> tuple[dict, dict, Path]:
    """A dt classified and staged (planned and collected), not yet published: what publish_partition receives."""
    out = tmp_path / "predictions" / f"dt={DT}"
    plan = plan_for(incoming, out)
    job = job_for(incoming, out, plan, url)
    staged = collect_shards(plan, [classify_shard(job, plan.shards[0])])
    return {"job": job.to_dict(), "plan": plan.to_dict()}, staged.to_dict(), out


def kill_while_publishing(planned: dict, staged: dict, out: Path) -> None:
    proc = child(_PUBLISH, json.dumps(planned), json.dumps(staged))
    try:
        wait_for(lambda: (out / LEASE).exists(), "the lease")
        time.sleep(0.3)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert (out / LEASE).exists() and not (out / SUCCESS).exists()


def test_a_publisher_killed_holding_the_lease_is_taken_over_at_once_by_its_retry(tmp_path, incoming, server):
    server.reopen()
    planned, staged, out = staged_run(tmp_path, incoming, server.url)
    kill_while_publishing(planned, staged, out)

    started = time.monotonic()
    summary = steps.publish(planned, staged, {"passed": True}, FakeTI(try_number=2))  # the task's retry
    took = time.monotonic() - started

    print(f"rerun after kill -9 during publish: committed in {took:.2f} s")
    assert took < 10 and summary["images"] == IMAGES  # not LEASE_TTL_S (120 s), nor the old 900 s
    rows = stable(predictions.read_partition(storage_path(folder(out))).sort_by("key").to_pylist())
    assert rows == clean_rows(tmp_path, incoming, server.url)
    assert not (out / LEASE).exists()


def test_a_lease_whose_owner_airflow_still_runs_is_refused_saying_when_it_expires(tmp_path, incoming, server):
    server.reopen()
    planned, staged, out = staged_run(tmp_path, incoming, server.url)
    kill_while_publishing(planned, staged, out)

    other_run = FakeTI(run_id="backfill__2026-11-02", live=1)  # Airflow still counts the killed try as running
    with pytest.raises(PublishConflict) as refused:
        steps.publish(planned, staged, {"passed": True}, other_run)
    message = str(refused.value)
    assert "being published by run" in message and "task_id=publish_partition" in message
    assert "expires at" in message and "delete the lease file" in message

    other_run.live = 0  # Airflow has marked it failed (its heartbeat stopped): taken over without waiting
    assert steps.publish(planned, staged, {"passed": True}, other_run)["images"] == IMAGES
