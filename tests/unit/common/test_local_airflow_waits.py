"""create_backfill, wait_for_backfill, write and wait_healthy against a fake Airflow REST API (httpx.MockTransport)
and a fake clock: they follow Airflow's reported state, log progress, and fail at their named deadline."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tasks.common import local_airflow
from tasks.common.local_airflow import (
    WaitTimeout,
    create_backfill,
    wait_for,
    wait_for_backfill,
    wait_healthy,
    write,
)

DONE = "2026-12-01T10:00:00Z"
BODY = {
    "dag_id": "d",
    "from_date": "2026-11-02T00:00:00Z",
    "to_date": "2026-11-04T00:00:00Z",
    "max_active_runs": 1,
    "reprocess_behavior": "completed",
    "dag_run_conf": {"shard_size": 4},
}


def backfill(id_: int, completed_at: str | None = None, **fields: Any) -> dict[str, Any]:
    record = {**BODY, "from_date": "2026-11-02T00:00:00Z", "to_date": "2026-11-04T00:00:00Z"}
    return record | {"id": id_, "created_at": "2026-12-01T09:00:00Z", "completed_at": completed_at} | fields


@dataclass
class Clock:
    now: float = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class FakeAirflow:
    """The backfill endpoints' state, changed by callbacks as requests arrive; every request is recorded."""

    backfills: list[dict[str, Any]] = field(default_factory=list)
    post_answers: list[httpx.Response] = field(default_factory=list)
    complete_after_polls: dict[int, int] = field(default_factory=dict)  # backfill id → GETs before completed_at
    runs: list[dict[str, Any]] = field(default_factory=list)
    on_post: Any = None
    requests: list[tuple[str, str]] = field(default_factory=list)
    polls: dict[int, int] = field(default_factory=dict)

    def handler(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/api/v2")
        self.requests.append((request.method, path))
        if request.method == "POST" and path == "/backfills":
            assert json.loads(request.content) == BODY
            if self.on_post:
                self.on_post(self)
            return self.post_answers.pop(0)
        if path == "/backfills":
            assert request.url.params["dag_id"] == "d"
            return httpx.Response(200, json={"backfills": self.backfills, "total_entries": len(self.backfills)})
        if path.startswith("/backfills/"):
            id_ = int(path.rsplit("/", 1)[1])
            record = next(b for b in self.backfills if b["id"] == id_)
            self.polls[id_] = self.polls.get(id_, 0) + 1
            if id_ in self.complete_after_polls and self.polls[id_] >= self.complete_after_polls[id_]:
                record["completed_at"] = DONE
            return httpx.Response(200, json=record)
        if path == "/dags/d/dagRuns":
            states = request.url.params.get_list("state")
            runs = [r for r in self.runs if not states or r["state"] in states]
            return httpx.Response(200, json={"dag_runs": runs, "total_entries": len(runs)})
        raise AssertionError(f"unexpected {request.method} {path}")

    def client(self) -> httpx.Client:
        return httpx.Client(base_url="http://airflow/api/v2", transport=httpx.MockTransport(self.handler))

    def posts(self) -> int:
        return self.requests.count(("POST", "/backfills"))


def create(fake: FakeAirflow, clock: Clock, lines: list[str], **deadlines: float) -> dict[str, Any]:
    return create_backfill(fake.client(), BODY, clock=clock, sleep=clock.sleep, log=lines.append, **deadlines)


def test_the_previous_backfill_is_waited_for_until_completed_at_then_posted_once() -> None:
    fake = FakeAirflow(
        backfills=[backfill(6)],
        complete_after_polls={6: 20},
        runs=[{"state": "running", "queued_at": "2026-12-01T09:00:01Z"}],
        post_answers=[httpx.Response(200, json=backfill(7))],
    )
    clock, lines = Clock(), []
    assert create(fake, clock, lines)["id"] == 7
    assert fake.polls[6] == 20 and fake.posts() == 1
    first_post = fake.requests.index(("POST", "/backfills"))
    assert all(fake.requests[i] != ("GET", "/backfills/6") for i in range(first_post, len(fake.requests)))
    progress = [line for line in lines if line.startswith("waiting for backfill 6 of d")]
    # 19 polls 2 s apart: 38 s, a line every 15 s at most; each says how far along and what is left to run.
    assert len(progress) == 2 and "1 of its runs queued or running" in progress[0]
    assert "of 900s" in progress[0]


def test_a_previous_backfill_that_never_completes_fails_at_the_named_deadline_without_posting() -> None:
    fake = FakeAirflow(backfills=[backfill(6)], runs=[])
    clock, lines = Clock(), []
    with pytest.raises(WaitTimeout) as error:
        create(fake, clock, lines, complete_deadline_s=60)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("gave up waiting for backfill 6 of d to be marked complete (completed_at)")
    assert "BACKFILL_COMPLETE_DEADLINE_S=60s" in message and "no run left queued or running" in message
    assert fake.posts() == 0 and 60 < clock.now <= 64


def test_a_409_after_the_previous_one_completed_is_retried() -> None:
    """The backfill was marked complete between the scheduler's check and ours: nothing to wait for, POST again."""
    already = httpx.Response(409, json={"detail": "There is already a running backfill for dag d"})
    fake = FakeAirflow(backfills=[backfill(6, DONE)], post_answers=[already, httpx.Response(200, json=backfill(7))])
    assert create(fake, Clock(), [])["id"] == 7
    assert fake.posts() == 2


def test_a_409_for_a_backfill_that_appeared_meanwhile_waits_for_it() -> None:
    already = httpx.Response(409, json={"detail": "There is already a running backfill for dag d"})

    def someone_else_creates_one(fake: FakeAirflow) -> None:
        if fake.posts() == 1:
            fake.backfills.insert(0, backfill(9, reprocess_behavior="none"))

    fake = FakeAirflow(
        post_answers=[already, httpx.Response(200, json=backfill(10))],
        complete_after_polls={9: 3},
        on_post=someone_else_creates_one,
    )
    assert create(fake, Clock(), [])["id"] == 10
    assert fake.posts() == 2 and fake.polls[9] == 3


def test_sqlite_lock_answers_are_retried_until_created() -> None:
    locked = httpx.Response(503, json={"detail": "Database is locked. Backfill creation is not supported on SQLite"})
    fake = FakeAirflow(post_answers=[locked, httpx.Response(500, json={}), httpx.Response(200, json=backfill(8))])
    lines: list[str] = []
    assert create(fake, Clock(), lines)["id"] == 8
    assert fake.posts() == 3 and any("503 Database is locked" in line for line in lines)


def test_a_lock_that_never_clears_fails_at_the_retry_deadline() -> None:
    fake = FakeAirflow(post_answers=[httpx.Response(503, json={"detail": "Database is locked."})] * 100)
    clock = Clock()
    with pytest.raises(RuntimeError, match=r"still refused after 3[0-9]s \(WRITE_RETRY_DEADLINE_S=30s\): 503 Data"):
        create(fake, clock, [], retry_deadline_s=30)
    assert fake.posts() < 100


def test_an_error_answer_whose_backfill_was_created_anyway_is_adopted_not_run_twice() -> None:
    """Airflow commits the backfill and its runs, then the request's session commit loses SQLite's lock: 500."""
    already = httpx.Response(409, json={"detail": "There is already a running backfill for dag d"})

    def created_despite_the_error(fake: FakeAirflow) -> None:
        if fake.posts() == 1:
            fake.backfills.insert(0, backfill(11, created_at="2026-12-01T09:30:00Z"))
            fake.runs = [{"state": "queued", "queued_at": "2026-12-01T09:30:00.2Z"}]

    fake = FakeAirflow(
        backfills=[backfill(6, DONE)],
        post_answers=[httpx.Response(500, json={"detail": "Database error"}), already],
        on_post=created_despite_the_error,
    )
    lines: list[str] = []
    assert create(fake, Clock(), lines)["id"] == 11
    assert fake.posts() == 2 and 11 not in fake.polls
    assert any("backfill 11" in line and "answered with an error" in line for line in lines)


def test_an_orphan_of_a_failed_creation_is_waited_out_then_created_anew() -> None:
    """The backfill row was committed, its runs rolled back: Airflow marks it complete when it is 2 minutes old."""
    already = httpx.Response(409, json={"detail": "There is already a running backfill for dag d"})

    def orphan(fake: FakeAirflow) -> None:
        if fake.posts() == 1:
            fake.backfills.insert(0, backfill(11, created_at="2026-12-01T09:30:00Z"))
            fake.runs = [{"state": "success", "queued_at": "2026-12-01T09:00:00Z"}]  # the previous backfill's

    fake = FakeAirflow(
        post_answers=[httpx.Response(503, json={"detail": "Database is locked."}), already],
        complete_after_polls={11: 5},
        on_post=orphan,
    )
    fake.post_answers.append(httpx.Response(200, json=backfill(12)))
    assert create(fake, Clock(), [])["id"] == 12
    assert fake.posts() == 3 and fake.polls[11] == 5


def test_any_other_refusal_is_reported_at_once_with_airflows_reason() -> None:
    fake = FakeAirflow(post_answers=[httpx.Response(422, json={"detail": "No runs to create for Dag d"})])
    with pytest.raises(RuntimeError, match=r"refused \(422\): No runs to create for Dag d"):
        create(fake, Clock(), [])


def test_wait_for_backfill_returns_the_runs_only_once_completed_at_is_set() -> None:
    fake = FakeAirflow(backfills=[backfill(7)], complete_after_polls={7: 3}, runs=[{"state": "success"}])
    clock = Clock()
    runs = wait_for_backfill(fake.client(), 7, clock=clock, sleep=clock.sleep, log=lambda line: None)
    assert runs == [{"state": "success"}] and fake.polls[7] == 3


def test_wait_for_backfill_fails_at_its_deadline_naming_the_backfill() -> None:
    fake = FakeAirflow(backfills=[backfill(7)], runs=[{"state": "running"}, {"state": "queued"}])
    clock = Clock()
    with pytest.raises(WaitTimeout, match=r"backfill 7 of d .*BACKFILL_RUNS_DEADLINE_S=100s.*2 of its runs queued"):
        wait_for_backfill(fake.client(), 7, 100, clock=clock, sleep=clock.sleep, log=lambda line: None)


def test_write_retries_5xx_until_its_deadline_then_says_what_failed() -> None:
    answers = [httpx.Response(503, json={"detail": "locked"})] * 2 + [httpx.Response(200, json={})]
    client = httpx.Client(base_url="http://a", transport=httpx.MockTransport(lambda request: answers.pop(0)))
    clock = Clock()
    assert write(client, "PATCH", "/dags/d", {}, clock=clock, sleep=clock.sleep, log=lambda line: None).is_success
    answers[:] = [httpx.Response(500, json={"detail": "Database error"})] * 50
    with pytest.raises(RuntimeError, match=r"PATCH /dags/d still failing after 1[1-2]s .*500 Database error"):
        write(client, "PATCH", "/dags/d", {}, deadline_s=10, clock=clock, sleep=clock.sleep, log=lambda line: None)


def test_wait_for_reports_progress_at_most_every_progress_interval() -> None:
    clock, lines = Clock(), []
    result = wait_for(
        lambda: "ready" if clock.now >= 50 else None,
        what="x",
        deadline_s=100,
        deadline_name="X_S",
        describe=lambda: f"t={clock.now:.0f}",
        poll_s=1,
        progress_s=15,
        clock=clock,
        sleep=clock.sleep,
        log=lines.append,
    )
    assert result == "ready"
    assert lines == [
        "waiting for x: 15s of 100s; t=15",
        "waiting for x: 30s of 100s; t=30",
        "waiting for x: 45s of 100s; t=45",
    ]


def test_wait_healthy_fails_at_once_when_a_component_exited(monkeypatch: pytest.MonkeyPatch) -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    monkeypatch.setattr(local_airflow.httpx, "get", lambda *a, **k: pytest.fail("asked the API of a dead stack"))
    with pytest.raises(RuntimeError, match=rf"\[{child.pid}\] exited"):
        wait_healthy("http://127.0.0.1:9", [child.pid])
