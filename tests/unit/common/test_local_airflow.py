"""The helpers bin/demo and bin/demo-backfill use against the local Airflow."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tasks.common.local_airflow import create_backfill, wait_for_backfill, write_test_task_logs

RUN = "manual__2026-12-01T09:53:00.593445+00:00"


def block(task: str, map_index: int, body: str) -> str:
    return (
        f"t0 [info] [DAG TEST] starting task_id={task} map_index={map_index} [dag] loc=dag.py:1501\n"
        f"t0 [info] [DAG TEST] running task <TaskInstance: demo.{task} {RUN} [TaskInstanceState.SCHEDULED] ti_id=x>\n"
        f"{body}\n"
        f"t1 [info] [DAG TEST] end task task_id={task} map_index={map_index} [dag] loc=dag.py:1563\n"
    )


def test_dags_test_output_becomes_one_log_file_per_task_attempt(tmp_path: Path) -> None:
    output = "parsing noise\n" + block("plan", -1, "planned 3") + block("shard", 1, "shard one") + "between\n"
    output += block("plan", -1, "second try")
    written = write_test_task_logs(output, tmp_path)
    base = tmp_path / "dag_id=demo" / f"run_id={RUN}"
    assert written == [
        base / "task_id=plan" / "attempt=1.log",
        base / "task_id=shard" / "map_index=1" / "attempt=1.log",
        base / "task_id=plan" / "attempt=2.log",
    ]
    assert "planned 3" in written[0].read_text() and "second try" not in written[0].read_text()
    assert "shard one" in written[1].read_text() and "parsing noise" not in written[1].read_text()
    assert "second try" in written[2].read_text()


def test_a_block_without_its_task_instance_line_writes_nothing(tmp_path: Path) -> None:
    output = "[DAG TEST] starting task_id=plan map_index=-1\nno ti line\n[DAG TEST] end task task_id=plan\n"
    assert write_test_task_logs(output, tmp_path) == []


def api(handler) -> httpx.Client:
    return httpx.Client(base_url="http://airflow/api/v2", transport=httpx.MockTransport(handler))


def test_create_backfill_waits_for_the_scheduler_to_mark_the_previous_one_complete() -> None:
    answers = [httpx.Response(409, json={"detail": "AlreadyRunningBackfill"}), httpx.Response(200, json={"id": 7})]
    bodies = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return answers.pop(0)

    assert create_backfill(api(handler), {"dag_id": "d"}, wait_s=10, poll_s=0) == {"id": 7}
    assert bodies == [{"dag_id": "d"}, {"dag_id": "d"}]


def test_create_backfill_reports_a_refusal_with_airflows_reason() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(409, json={"detail": "AlreadyRunningBackfill"})

    with pytest.raises(RuntimeError, match=r"409.*AlreadyRunningBackfill"):
        create_backfill(api(handler), {"dag_id": "d"}, wait_s=0)


def test_wait_for_backfill_returns_only_once_completed_at_is_set() -> None:
    polls = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/backfills/7"):
            polls.append(1)
            done = "2026-12-01T10:00:00Z" if len(polls) > 1 else None
            return httpx.Response(200, json={"dag_id": "d", "from_date": "a", "to_date": "b", "completed_at": done})
        assert request.url.params["logical_date_gte"] == "a"
        return httpx.Response(200, json={"dag_runs": [{"state": "success"}]})

    assert wait_for_backfill(api(handler), 7, timeout_s=30, poll_s=0) == [{"state": "success"}]
    assert len(polls) == 2


def test_create_backfill_retries_when_sqlite_was_locked() -> None:
    locked = {"detail": "Database is locked. Backfill creation is not supported on SQLite under concurrent access."}
    answers = [httpx.Response(503, json=locked), httpx.Response(500, json={}), httpx.Response(200, json={"id": 8})]
    assert create_backfill(api(lambda request: answers.pop(0)), {"dag_id": "d"}, wait_s=10, poll_s=0) == {"id": 8}
