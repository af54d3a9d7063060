"""The running local Airflow's REST API, for the project's helper scripts (bin/demo-backfill, bin/ui).

Why REST and not the CLI: on SQLite a second writer process (`airflow backfill create`, `dags unpause`) beside a
running scheduler can die with `sqlite3.OperationalError: database is locked`, and the CLI gives up. Through the API
server, the process that already writes for the UI does the write, and a lost lock comes back as a clear 503 that is
retried here (see create_backfill) — on SQLite only a retry makes it reliable; PostgreSQL never needs one.

Run as `python -m tasks.common.local_airflow backfill DAG_ID FROM TO [--reprocess-behavior …]` (bin/demo-backfill).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

ADMIN_USER = "admin"
ACTIVE = ("queued", "running")
MARK_COMPLETE_S = 30  # the scheduler marks finished backfills complete on this interval (_mark_backfills_complete)


def passwords_file(airflow_home: str | Path) -> Path:
    """Where the simple auth manager keeps (and, on the API server's first start, generates) the passwords."""
    configured = os.environ.get("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE")
    return Path(configured) if configured else Path(airflow_home) / "simple_auth_manager_passwords.json.generated"


def login(base_url: str, airflow_home: str | Path, user: str = ADMIN_USER) -> httpx.Client:
    """A client of `/api/v2` with a token for `user` (password from the auth manager's file)."""
    password = json.loads(passwords_file(airflow_home).read_text())[user]
    response = httpx.post(f"{base_url}/auth/token", json={"username": user, "password": password}, timeout=30)
    response.raise_for_status()
    token = response.json()["access_token"]
    return httpx.Client(base_url=f"{base_url}/api/v2", headers={"Authorization": f"Bearer {token}"}, timeout=60)


def create_backfill(
    api: httpx.Client, body: dict[str, Any], wait_s: float = 4 * MARK_COMPLETE_S, poll_s: float = 2.0
) -> dict[str, Any]:
    """POST /backfills, retried while Airflow says it is only a matter of time:
    - 409 AlreadyRunningBackfill: the DAG's previous backfill has finished its runs but the scheduler has not marked
      it complete yet (it does every MARK_COMPLETE_S);
    - 503 "Database is locked": on SQLite the API server's write can still lose the lock to the scheduler (Airflow
      answers 503 and says SQLite does not support concurrent backfill creation); the scheduler's transactions are
      short, so a retry a moment later succeeds. Measured on 2 cores: 1 in 5 e2e runs hit it once;
    - 500 "Database error": the same race surfacing elsewhere in backfill creation (1 in 10 runs); the transaction
      was rolled back, so retrying creates the backfill once."""
    deadline = time.monotonic() + wait_s
    while True:
        response = api.post("/backfills", json=body)
        if response.status_code not in (409, 500, 503) or time.monotonic() > deadline:
            if response.is_error:
                raise RuntimeError(f"backfill create refused ({response.status_code}): {response.text}")
            return response.json()
        time.sleep(poll_s)


def write(api: httpx.Client, method: str, url: str, json: dict[str, Any], attempts: int = 10) -> httpx.Response:
    """A small REST write, retried when SQLite's lock made it fail (5xx); raises on anything else."""
    for attempt in range(attempts):
        response = api.request(method, url, json=json)
        if response.status_code < 500 or attempt == attempts - 1:
            return response.raise_for_status()
        time.sleep(1)
    raise AssertionError("unreachable")


def wait_for_backfill(
    api: httpx.Client, backfill_id: int, timeout_s: float, poll_s: float = 2.0
) -> list[dict[str, Any]]:
    """Until Airflow's own record says the backfill is complete (`completed_at`); returns the DAG's runs in its
    range. Stopping the scheduler before that leaves it "in progress" forever: the DAG's next backfill is refused."""
    deadline = time.monotonic() + timeout_s
    while True:
        backfill = api.get(f"/backfills/{backfill_id}").raise_for_status().json()
        if backfill["completed_at"]:
            window = {"logical_date_gte": backfill["from_date"], "logical_date_lte": backfill["to_date"], "limit": 100}
            runs = api.get(f"/dags/{backfill['dag_id']}/dagRuns", params=window).raise_for_status().json()
            return runs["dag_runs"]
        if time.monotonic() > deadline:
            raise TimeoutError(f"backfill {backfill_id} not complete after {timeout_s:.0f}s")
        time.sleep(poll_s)


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
            backfill = create_backfill(api, body)
            print(f"backfill {backfill['id']} of {args.dag_id} {args.from_date}..{args.to_date} created")
            runs = wait_for_backfill(api, backfill["id"], args.timeout_s)
        finally:
            write(api, "PATCH", f"/dags/{args.dag_id}", {"is_paused": True})
    states = sorted(run["state"] for run in runs)
    counts = " ".join(f"{states.count(s)} {s}" for s in sorted(set(states))) or "no runs"
    print(f"{args.dag_id} runs {args.from_date}..{args.to_date}: {counts}")
    return 0 if all(s == "success" for s in states) else 1


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
    p.add_argument("--timeout-s", type=float, default=1800)
    p.set_defaults(func=_backfill)
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
