"""The running local Airflow's REST API, for the project's helper scripts (bin/demo-backfill, bin/ui).

Why REST and not the CLI: on SQLite a second writer process (`airflow backfill create`, `dags unpause`) beside a
running scheduler can die with `sqlite3.OperationalError: database is locked`, and the CLI gives up. Through the API
server, the process that already writes for the UI does the write, and a lost lock comes back as a clear 503 that is
retried here (see create_backfill) — on SQLite only a retry makes it reliable; PostgreSQL never needs one.

Every wait here follows what Airflow itself reports (a backfill's `completed_at`, the health endpoint, a write's
answer), logs progress every PROGRESS_EVERY_S to stderr, and gives up at a named deadline with one line saying what
it waited for. The deadlines are bounds for a stuck system, not estimates: a loaded 2-core laptop (the scheduler's
loop and the runs themselves slowed several times over) must stay well inside them.

Run as `python -m tasks.common.local_airflow backfill DAG_ID FROM TO [--reprocess-behavior …]` (bin/demo-backfill),
or `… wait-healthy --api-url URL [--pid PID …]` (bin/demo-backfill, bin/ui).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx

ADMIN_USER = "admin"
ACTIVE = ("queued", "running")
MARK_COMPLETE_S = 30  # the scheduler marks finished backfills complete on this interval (_mark_backfills_complete)
# Airflow (3.3) marks a backfill whose creation failed half-way (its row committed, no runs attached) complete only
# once it is this old: `_mark_backfills_complete`'s initializing cutoff.
ORPHAN_CUTOFF_S = 120

PROGRESS_EVERY_S = 15.0  # a progress line at most this often while waiting
POLL_S = 2.0
# Waiting for the DAG's previous backfill to be marked complete before creating the next one (one running backfill
# per DAG). Normally that takes one MARK_COMPLETE_S tick after its last run ends; an orphan of a failed creation
# takes ORPHAN_CUTOFF_S + a tick (150 s). 900 s is six times that worst case, with room for a previous backfill
# that still has a few local runs to finish on a saturated machine; past it, something is stuck (a paused DAG, a
# dead scheduler), not slow.
BACKFILL_COMPLETE_DEADLINE_S = 900.0
# Retrying writes that SQLite's lock made fail (503 "Database is locked", 500 "Database error"). The scheduler's
# transactions last well under a second even when loaded; 300 s of refusals means the database is wedged.
WRITE_RETRY_DEADLINE_S = 300.0
# A backfill's own runs, from creation to `completed_at` (bin/demo-backfill: 3 local classify_images runs, ~1 min
# idle). 30 min covers them many times over on a loaded laptop; `--deadline-s` to change.
BACKFILL_RUNS_DEADLINE_S = 1800.0
# The API server answering /monitor/health with the metadatabase and scheduler healthy (~15 s idle on 2 cores:
# api-server and scheduler importing Airflow side by side). A component that exits fails the wait at once.
API_READY_DEADLINE_S = 300.0

T = TypeVar("T")


class WaitTimeout(TimeoutError):
    """A wait passed its deadline; the message says what was awaited, for how long, and the last state seen."""


def say(message: str) -> None:
    """A progress line on stderr (bin/demo-backfill's log, pytest's captured output)."""
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def wait_for(
    check: Callable[[], T | None],
    *,
    what: str,
    deadline_s: float,
    deadline_name: str,
    describe: Callable[[], str] = lambda: "",
    poll_s: float = POLL_S,
    progress_s: float = PROGRESS_EVERY_S,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    log: Callable[[str], None] = say,
) -> T:
    """Call `check` until it returns something other than None (or False); return that. `describe` says where things
    stand (for progress lines and the timeout); `check` may raise to fail at once (a failed run, a dead process)."""
    started = clock()
    last_report = started
    while True:
        result = check()
        if result is not None and result is not False:
            return result
        waited = clock() - started
        if waited > deadline_s:
            state = describe()
            raise WaitTimeout(
                f"gave up waiting for {what} after {waited:.0f}s ({deadline_name}={deadline_s:.0f}s)"
                + (f": {state}" if state else "")
            )
        if clock() - last_report >= progress_s:
            state = describe()
            log(f"waiting for {what}: {waited:.0f}s of {deadline_s:.0f}s" + (f"; {state}" if state else ""))
            last_report = clock()
        sleep(poll_s)


def passwords_file(airflow_home: str | Path) -> Path:
    """Where the simple auth manager keeps (and, on the API server's first start, generates) the passwords."""
    configured = os.environ.get("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE")
    return Path(configured) if configured else Path(airflow_home) / "simple_auth_manager_passwords.json.generated"


def login(base_url: str, airflow_home: str | Path, user: str = ADMIN_USER) -> httpx.Client:
    """A client of `/api/v2` with a token for `user` (password from the auth manager's file)."""
    password = json.loads(passwords_file(airflow_home).read_text())[user]
    response = httpx.post(f"{base_url}/auth/token", json={"username": user, "password": password}, timeout=60)
    response.raise_for_status()
    token = response.json()["access_token"]
    return httpx.Client(base_url=f"{base_url}/api/v2", headers={"Authorization": f"Bearer {token}"}, timeout=60)


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        detail = response.text
    return " ".join(str(detail).split())[:300]


def list_backfills(api: httpx.Client, dag_id: str) -> list[dict[str, Any]]:
    """The DAG's backfills, newest first (the one that can still be running is among the newest)."""
    params = {"dag_id": dag_id, "order_by": "-id", "limit": 100}
    return api.get("/backfills", params=params).raise_for_status().json()["backfills"]


def unfinished_runs(api: httpx.Client, backfill: dict[str, Any]) -> int | None:
    """How many backfill runs in the backfill's range are still queued or running (None: Airflow did not say)."""
    window = {"logical_date_gte": backfill["from_date"], "logical_date_lte": backfill["to_date"]}
    params = {**window, "run_type": "backfill", "state": list(ACTIVE), "limit": 1}
    try:
        response = api.get(f"/dags/{backfill['dag_id']}/dagRuns", params=params)
    except httpx.HTTPError:
        return None
    return response.json().get("total_entries") if response.is_success else None


def _describe_backfill(api: httpx.Client, backfill: dict[str, Any]) -> str:
    where = (
        f"backfill {backfill['id']} of {backfill['dag_id']} {backfill['from_date'][:10]}..{backfill['to_date'][:10]}"
    )
    left = unfinished_runs(api, backfill)
    if left is None:
        return f"{where}, created {backfill['created_at']}"
    if left:
        return f"{where}: {left} of its runs queued or running"
    return (
        f"{where}: no run left queued or running; the scheduler marks it complete within {MARK_COMPLETE_S}s "
        f"(a backfill whose creation failed: once it is {ORPHAN_CUTOFF_S}s old, created {backfill['created_at']})"
    )


def wait_until_complete(
    api: httpx.Client,
    backfill: dict[str, Any],
    *,
    why: str = "",
    deadline_s: float = BACKFILL_COMPLETE_DEADLINE_S,
    deadline_name: str = "BACKFILL_COMPLETE_DEADLINE_S",
    **waiting: Any,
) -> dict[str, Any]:
    """Until Airflow's own record of the backfill has `completed_at`; returns that record. A read that fails (the
    API server busy, a 5xx) is retried until the deadline like any other poll."""
    latest = [backfill]

    def check() -> dict[str, Any] | None:
        try:
            response = api.get(f"/backfills/{backfill['id']}")
        except httpx.TransportError:
            return None
        if response.status_code >= 500:
            return None
        latest[0] = response.raise_for_status().json()
        return latest[0] if latest[0]["completed_at"] else None

    what = f"backfill {backfill['id']} of {backfill['dag_id']} to be marked complete (completed_at){why}"
    done = wait_for(
        check,
        what=what,
        deadline_s=deadline_s,
        deadline_name=deadline_name,
        describe=lambda: _describe_backfill(api, latest[0]),
        **waiting,
    )
    return done


def _same_request(backfill: dict[str, Any], body: dict[str, Any]) -> bool:
    def instant(value: str) -> datetime:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))

    return (
        backfill["dag_id"] == body["dag_id"]
        and instant(backfill["from_date"]) == instant(body["from_date"])
        and instant(backfill["to_date"]) == instant(body["to_date"])
        and backfill.get("reprocess_behavior", "none") == body.get("reprocess_behavior", "none")
        and backfill.get("max_active_runs", 10) == body.get("max_active_runs", 10)
        and (backfill.get("dag_run_conf") or {}) == (body.get("dag_run_conf") or {})
    )


def _has_queued_runs(api: httpx.Client, backfill: dict[str, Any]) -> bool:
    """Whether Airflow queued any run of the backfill's range since the backfill was created: the runs it made
    or cleared. An orphan of a failed creation (row committed, runs rolled back) has none."""
    window = {"logical_date_gte": backfill["from_date"], "logical_date_lte": backfill["to_date"], "limit": 100}
    runs = api.get(f"/dags/{backfill['dag_id']}/dagRuns", params=window).raise_for_status().json()["dag_runs"]
    created = datetime.fromisoformat(backfill["created_at"].replace("Z", "+00:00"))
    return any(
        run.get("queued_at") and datetime.fromisoformat(run["queued_at"].replace("Z", "+00:00")) >= created
        for run in runs
    )


def create_backfill(
    api: httpx.Client,
    body: dict[str, Any],
    *,
    complete_deadline_s: float = BACKFILL_COMPLETE_DEADLINE_S,
    retry_deadline_s: float = WRITE_RETRY_DEADLINE_S,
    poll_s: float = POLL_S,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    log: Callable[[str], None] = say,
) -> dict[str, Any]:
    """POST /backfills once the DAG has no backfill in progress (Airflow allows one per DAG), following Airflow's
    state rather than a clock:
    - first, every backfill of the DAG without `completed_at` is waited for (the previous one's last runs, then
      the scheduler's next `_mark_backfills_complete`, every MARK_COMPLETE_S; a half-created orphan takes
      ORPHAN_CUTOFF_S), up to `complete_deadline_s` each;
    - 409 AlreadyRunningBackfill anyway (another backfill appeared, or the one waited for was only just marked):
      wait for whatever is in progress again, then POST again;
    - 503 "Database is locked" / 500 "Database error": on SQLite the API server's write can lose the lock to the
      scheduler (measured on 2 cores: 1 in 5 e2e runs once, 1 in 10 a 500); retried until `retry_deadline_s`.
      Airflow commits the backfill row before its runs, and the request's session after the handler, so an error
      answer does not prove nothing was created: a new backfill of exactly this request found after one, with
      runs queued since its creation, IS this request's backfill and is returned (a retry would only wait for it
      and then run everything twice). One with no queued runs is an orphan: waited for, then created anew."""
    waiting: dict[str, Any] = {"poll_s": poll_s, "clock": clock, "sleep": sleep, "log": log}
    dag_id = body["dag_id"]
    span = f"{dag_id} {str(body['from_date'])[:10]}..{str(body['to_date'])[:10]}"
    known: set[int] = set()
    errored_at: float | None = None  # when Airflow first answered this request with a 5xx
    retry_since: float | None = None

    def wait_for_active(why: str) -> bool:
        backfills = list_backfills(api, dag_id)
        known.update(b["id"] for b in backfills)
        active = [b for b in backfills if not b["completed_at"]]
        for backfill in active:
            log(f"backfill {backfill['id']} of {dag_id} is not complete yet: waiting for it{why}")
            wait_until_complete(api, backfill, why=why, deadline_s=complete_deadline_s, **waiting)
        return bool(active)

    def retry_or_raise(reason: str) -> None:
        nonlocal retry_since
        retry_since = clock() if retry_since is None else retry_since
        if clock() - retry_since > retry_deadline_s:
            raise RuntimeError(
                f"backfill create for {span} still refused after {clock() - retry_since:.0f}s "
                f"(WRITE_RETRY_DEADLINE_S={retry_deadline_s:.0f}s): {reason}"
            )
        log(f"backfill create for {span}: {reason}; retrying")
        sleep(poll_s)

    wait_for_active(f" before creating {span}")
    while True:
        response = api.post("/backfills", json=body)
        if response.is_success:
            return response.json()
        detail = _detail(response)
        if response.status_code in (500, 503):
            errored_at = clock() if errored_at is None else errored_at
            retry_or_raise(f"{response.status_code} {detail}")
            continue
        if response.status_code != 409 or "already a running backfill" not in response.text:
            raise RuntimeError(f"backfill create refused ({response.status_code}): {detail}")
        if errored_at is not None:
            seen = list_backfills(api, dag_id)
            ours = [b for b in seen if b["id"] not in known and not b["completed_at"] and _same_request(b, body)]
            if ours and _has_queued_runs(api, ours[0]):
                log(f"backfill {ours[0]['id']} of {span} was created by the attempt Airflow answered with an error")
                return ours[0]
        if not wait_for_active(f" before creating {span} (Airflow answered 409: {detail})"):
            retry_or_raise(f"409 {detail}, but no backfill in progress any more")  # marked complete meanwhile


def write(
    api: httpx.Client,
    method: str,
    url: str,
    json: dict[str, Any],
    *,
    deadline_s: float = WRITE_RETRY_DEADLINE_S,
    poll_s: float = 1.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    log: Callable[[str], None] = say,
) -> httpx.Response:
    """A small REST write, retried while SQLite's lock makes it fail (5xx) up to `deadline_s`; raises on anything
    else, and on a 5xx past the deadline."""
    started = clock()
    while True:
        response = api.request(method, url, json=json)
        if response.status_code < 500:
            return response.raise_for_status()
        waited = clock() - started
        if waited > deadline_s:
            raise RuntimeError(
                f"{method} {url} still failing after {waited:.0f}s (deadline {deadline_s:.0f}s): "
                f"{response.status_code} {_detail(response)}"
            )
        log(f"{method} {url}: {response.status_code} {_detail(response)}; retrying")
        sleep(poll_s)


def wait_for_backfill(
    api: httpx.Client, backfill_id: int, deadline_s: float = BACKFILL_RUNS_DEADLINE_S, **waiting: Any
) -> list[dict[str, Any]]:
    """Until Airflow's own record says the backfill is complete (`completed_at`); returns the DAG's runs in its
    range. Stopping the scheduler before that leaves it "in progress" forever: the DAG's next backfill is refused."""
    backfill = api.get(f"/backfills/{backfill_id}").raise_for_status().json()
    backfill = wait_until_complete(
        api, backfill, deadline_s=deadline_s, deadline_name="BACKFILL_RUNS_DEADLINE_S", **waiting
    )
    window = {"logical_date_gte": backfill["from_date"], "logical_date_lte": backfill["to_date"], "limit": 100}
    runs = api.get(f"/dags/{backfill['dag_id']}/dagRuns", params=window).raise_for_status().json()
    return runs["dag_runs"]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def read_health(api_url: str, parts: Iterable[str]) -> tuple[dict[str, Any] | None, str]:
    """The API server's /monitor/health when every one of `parts` is healthy (else None), and a one-line summary."""
    try:
        health = httpx.get(f"{api_url}/api/v2/monitor/health", timeout=10).json()
    except (httpx.HTTPError, ValueError) as error:
        return None, f"no answer ({type(error).__name__})"
    states = {part: (health.get(part) or {}).get("status") for part in parts}
    summary = ", ".join(f"{part} {state}" for part, state in states.items())
    return (health if all(state == "healthy" for state in states.values()) else None), summary


def wait_healthy(
    api_url: str,
    pids: Iterable[int] = (),
    parts: Iterable[str] = ("metadatabase", "scheduler"),
    deadline_s: float = API_READY_DEADLINE_S,
    **waiting: Any,
) -> dict[str, Any]:
    """Until the API server's /monitor/health reports every one of `parts` healthy; fails at once when one of
    `pids` (the components started) has exited."""
    pids, parts = list(pids), list(parts)
    last: list[str] = ["no answer yet"]

    def check() -> dict[str, Any] | None:
        dead = [pid for pid in pids if not _alive(pid)]
        if dead:
            raise RuntimeError(f"component process(es) {dead} exited before {api_url} was healthy")
        health, last[0] = read_health(api_url, parts)
        return health

    return wait_for(
        check,
        what=f"{api_url} to report {', '.join(parts)} healthy",
        deadline_s=deadline_s,
        deadline_name="API_READY_DEADLINE_S",
        describe=lambda: last[0],
        **{"poll_s": 0.5, **waiting},
    )


_START = re.compile(r"\[DAG TEST\] starting task_id=(?P<task>\S+) map_index=(?P<map_index>-?\d+)")
_RUNNING = re.compile(r"\[DAG TEST\] running task <TaskInstance: (?P<dag>[^.\s]+)\.\S+ (?P<run>\S+) ")
_END = re.compile(r"\[DAG TEST\] end task ")


def write_test_task_logs(output: str, logs_root: Path) -> list[Path]:
    """Split the output of `airflow dags test` into the per-attempt task log files the UI reads.

    `dags test` runs tasks in its own process and writes no task log file, so the API server finds none locally
    and then asks a log server that does not exist ("could not read served logs"). Written under
    `base_log_folder` with Airflow's default `log_filename_template`, the API server reads them like any
    LocalExecutor task's. Returns the files written."""
    written: list[Path] = []
    attempts: Counter[tuple[str, str, str, int]] = Counter()
    task, map_index, lines = None, -1, []
    key: tuple[str, str, str, int] | None = None
    for line in output.splitlines(keepends=True):
        if start := _START.search(line):
            task, map_index, lines, key = start["task"], int(start["map_index"]), [], None
        elif task and key is None and (running := _RUNNING.search(line)):
            key = (running["dag"], running["run"], task, map_index)
            attempts[key] += 1
        if task is not None:
            lines.append(line)
        if task is not None and _END.search(line):
            if key is not None:
                dag_id, run_id, task_id, index = key
                path = logs_root / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
                path = (path / f"map_index={index}" if index >= 0 else path) / f"attempt={attempts[key]}.log"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("".join(lines))
                written.append(path)
            task, lines, key = None, [], None
    return written


def _task_logs(args: argparse.Namespace) -> int:
    written = write_test_task_logs(Path(args.output).read_text(errors="replace"), Path(args.logs_root))
    print(f"{len(written)} task log file(s) under {args.logs_root}")
    return 0


def _backfill(args: argparse.Namespace) -> int:
    with login(args.api_url, args.airflow_home) as api:
        write(api, "PATCH", f"/dags/{args.dag_id}", {"is_paused": False})  # backfill runs need it
        try:
            body = {
                "dag_id": args.dag_id,
                "from_date": f"{args.from_date}T00:00:00Z",
                "to_date": f"{args.to_date}T00:00:00Z",
                "max_active_runs": args.max_active_runs,
                "reprocess_behavior": args.reprocess_behavior,
                "run_backwards": args.run_backwards,
                "dag_run_conf": json.loads(args.dag_run_conf) if args.dag_run_conf else None,
            }
            started = time.monotonic()
            backfill = create_backfill(api, body)
            print(f"backfill {backfill['id']} of {args.dag_id} {args.from_date}..{args.to_date} created", flush=True)
            runs = wait_for_backfill(api, backfill["id"], args.deadline_s)
            print(f"backfill {backfill['id']} complete after {time.monotonic() - started:.0f}s", flush=True)
        finally:
            write(api, "PATCH", f"/dags/{args.dag_id}", {"is_paused": True})
    states = sorted(run["state"] for run in runs)
    counts = " ".join(f"{states.count(s)} {s}" for s in sorted(set(states))) or "no runs"
    print(f"{args.dag_id} runs {args.from_date}..{args.to_date}: {counts}")
    return 0 if all(s == "success" for s in states) else 1


def _wait_healthy(args: argparse.Namespace) -> int:
    started = time.monotonic()
    wait_healthy(args.api_url, args.pid, args.parts.split(","), args.deadline_s)
    print(f"{args.api_url} healthy ({args.parts}) after {time.monotonic() - started:.0f}s", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.common.local_airflow")
    sub = parser.add_subparsers(required=True)
    p = sub.add_parser("backfill", help="create a backfill through the API server and wait until it is complete")
    p.add_argument("dag_id")
    p.add_argument("from_date")
    p.add_argument("to_date")
    p.add_argument("--api-url", required=True)
    p.add_argument("--airflow-home", default=os.environ.get("AIRFLOW_HOME", ".airflow"))
    p.add_argument("--max-active-runs", type=int, default=1)
    p.add_argument("--reprocess-behavior", choices=["none", "completed", "failed"], default="none")
    p.add_argument("--run-backwards", action="store_true")
    p.add_argument("--dag-run-conf", help="JSON")
    p.add_argument("--deadline-s", type=float, default=BACKFILL_RUNS_DEADLINE_S, help="for the backfill's runs")
    p.set_defaults(func=_backfill)
    p = sub.add_parser("wait-healthy", help="wait until the API server reports the given components healthy")
    p.add_argument("--api-url", required=True)
    p.add_argument("--pid", type=int, action="append", default=[], help="a component's pid: fail if it exits")
    p.add_argument("--parts", default="metadatabase,scheduler", help="comma-separated /monitor/health parts")
    p.add_argument("--deadline-s", type=float, default=API_READY_DEADLINE_S)
    p.set_defaults(func=_wait_healthy)
    p = sub.add_parser("task-logs", help="write the task log files the UI reads from an `airflow dags test` output")
    p.add_argument("output", help="the saved output of `airflow dags test`")
    p.add_argument("--logs-root", default=os.path.join(os.environ.get("AIRFLOW_HOME", ".airflow"), "logs"))
    p.set_defaults(func=_task_logs)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (RuntimeError, TimeoutError, httpx.HTTPError, OSError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
