"""What a classify run tells the run list: its DagRun note (shown in the UI's runs list and on the run page) and the
flat asset-event extra with the same fields, so an operator reads dt, images, outcome and cost without opening a log.

How a note gets written (checked against Airflow 3.3.2's own code): the Task SDK and the execution API a task talks
to can only *read* a run's note (`DagRun.note` in the execution API's 2026-04-06 version; `note` exists only on
TriggerDAGRunPayload, for the run a task triggers). Setting one is the public REST API's
`PATCH /api/v2/dags/{dag_id}/dagRuns/{run_id}` (`DAGRunPatchBody`: `note` ≤ 1000 characters, `state`), which needs a
user's token. So `write_note` asks the REST API with the `airflow_api` connection (host = the API server's base URL,
login/password of a user allowed to edit runs), else — the local stack — as the simple auth manager's admin at
`[api] base_url`. A note that cannot be written is logged with its text and never fails the task: the note is a
view of what the run committed, not the commit.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from typing import Any

log = logging.getLogger(__name__)

NOTE_CONN_ID = "airflow_api"
MAX_NOTE_CHARS = 1000  # DAGRunPatchBody.note's max_length
STATUSES = ("ok", "invalid", "rejected", "failed")
Verdict = str  # "passed" | "violated" | "no data" | "not published"


def quality_verdict(verdict: dict[str, Any], rows: int) -> Verdict:
    """The quality gate's verdict as one word: its `verdict` key (passed | violated | no data), else — a gate or a
    manifest from before that key — "no data" for zero rows (there was nothing to judge), else passed/violated."""
    if verdict.get("verdict"):
        return str(verdict["verdict"])
    if rows == 0:
        return "no data"
    return "passed" if verdict.get("passed", True) else "violated"


@dataclass(frozen=True)
class DayOutcome:
    """One classified day as its run committed it (nightly: one per run; backlog: one per day of the range)."""

    dt: str
    images: int  # listed in incoming/dt=D/ (hidden/OS files not counted)
    classified: int  # sent to the model by this run
    carried: int  # kept from an earlier run of the same model version
    statuses: dict[str, int]
    quality: Verdict
    model_version: str
    cost_usd: float | None = None  # the day's classification cost; None: nothing priced (no endpoint)
    usd_per_1000_images: float | None = None
    estimated_accuracy: float | None = None  # the gate's mean calibrated confidence; None: no confidence to judge
    extra_lines: list[str] = field(default_factory=list)  # what a DAG adds (the backlog's range)

    def extra(self) -> dict[str, Any]:
        """The asset event's extra: flat key → value, as the UI's asset-event view reads best."""
        flat = {k: v for k, v in asdict(self).items() if k not in ("statuses", "extra_lines")}
        return flat | {status: self.statuses.get(status, 0) for status in STATUSES}

    def headline(self) -> str:
        if self.images == 0:
            return f"dt={self.dt} · NO IMAGES: nothing classified (quality {self.quality})"
        return f"dt={self.dt} · {self.images:,} images · quality {self.quality} · {money(self.cost_usd)}"

    def note(self) -> str:
        """The run note (Markdown): the headline first, as the runs list shows a note's start."""
        counts = ", ".join(f"{status} {self.statuses.get(status, 0):,}" for status in STATUSES)
        per_1000 = f" ({money(self.usd_per_1000_images)}/1000 images)" if self.usd_per_1000_images is not None else ""
        lines = [
            f"**{self.headline()}**",
            "",
            f"- images: {self.images:,} listed, {self.classified:,} classified, {self.carried:,} carried over",
            f"- statuses: {counts}",
            f"- quality gate: {self.quality}{estimated_text(self.estimated_accuracy)}",
            f"- cost: {money(self.cost_usd)}{per_1000}",
            f"- model: `{self.model_version or 'none'}`",
            *self.extra_lines,
        ]
        return "\n".join(lines)[:MAX_NOTE_CHARS]


def estimated_text(estimated: float | None) -> str:
    return "" if estimated is None else f" (estimated accuracy {estimated:.1%}, from calibrated confidence)"


def range_note(days: list[str], committed: list[dict[str, Any]]) -> str:
    """A backlog run's note: the range and its totals first, then one line per day (DayOutcome.extra of each
    committed day); a day with no line was not committed (its commit_day failed). Cut to the note's limit, the
    asset events keep every day's fields."""
    by_dt = {day["dt"]: day for day in committed}
    images = sum(day["images"] for day in committed)
    priced = [day["cost_usd"] for day in committed if day.get("cost_usd") is not None]
    missing = [dt for dt in days if dt not in by_dt]
    span = f"{days[0]}..{days[-1]}" if days else "no day"
    models = ", ".join(f"`{m}`" for m in sorted({day["model_version"] for day in committed})) or "none"
    lines = [
        f"**dt={span} · {len(by_dt)} of {len(days)} days committed · {images:,} images · "
        f"{money(sum(priced) if priced else None)}**",
        "",
        f"- model: {models}",
    ]
    if missing:
        lines.append(f"- NOT committed: {', '.join(missing)}")
    for dt in days:
        if dt in by_dt:
            day = by_dt[dt]
            counts = ", ".join(f"{status} {day.get(status, 0):,}" for status in STATUSES)
            lines.append(
                f"- dt={dt}: {day['images']:,} images ({counts}), quality {day['quality']}, {money(day['cost_usd'])}"
            )
    note = "\n".join(lines)
    if len(note) > MAX_NOTE_CHARS:
        note = note[: MAX_NOTE_CHARS - 60].rsplit("\n", 1)[0] + "\n- … (each day's fields: its asset event)"
    return note


def money(usd: float | None) -> str:
    return "not priced" if usd is None else f"${usd:,.4f}"


def nothing_ran_note(run_id: str, logical_date: str | None, start_date: str, dag_id: str) -> str:
    """The note of a run that got no task instance: a logical date before the DAG's start date (Airflow creates
    none for a non-backfill run then). The run is marked failed: it did not process the day it was asked for."""
    dt = (logical_date or "")[:10] or "D"
    return (
        f"**NOTHING RAN in {run_id}: dt={dt} is before the start date "
        f"(PIPELINE_CLASSIFY_START_DATE={start_date}); no day was processed, so the run is marked failed.**\n\n"
        "Airflow creates no task instance for a non-backfill run before the DAG's start date. To process the day: "
        f"`bin/airflow backfill create --dag-id {dag_id} --from-date {dt} --to-date {dt}` (or the DAG's Backfill "
        "form)."
    )


def _api_client() -> Any:
    """A client of the REST API (`/api/v2`) with a user's token: the `airflow_api` connection's, else the local
    stack's admin (the simple auth manager's password file under AIRFLOW_HOME, at `[api] base_url`)."""
    import httpx

    from tasks.common import local_airflow

    try:
        from airflow.sdk import BaseHook

        conn = BaseHook.get_connection(NOTE_CONN_ID)
    except Exception:  # not defined: the local stack
        conn = None
    if conn is not None:
        base = conn.host.rstrip("/")
        answer = httpx.post(f"{base}/auth/token", json={"username": conn.login, "password": conn.password}, timeout=10)
        answer.raise_for_status()
        token = answer.json()["access_token"]
        return httpx.Client(base_url=f"{base}/api/v2", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    from airflow.sdk.configuration import conf

    base = (conf.get("api", "base_url", fallback="") or "http://localhost:8080").rstrip("/")
    return local_airflow.login(base, os.path.expanduser(os.environ.get("AIRFLOW_HOME", "~/airflow")))


def logical_date(dag_id: str, run_id: str) -> str | None:
    """The run's logical date as the REST API reports it (a DAG callback's context has none); None when unknown."""
    try:
        with _api_client() as api:
            answer = api.get(f"/dags/{dag_id}/dagRuns/{run_id}")
            answer.raise_for_status()
            return answer.json().get("logical_date")
    except Exception as exc:
        log.warning("logical date of %s unknown (%s: %s)", run_id, type(exc).__name__, exc)
        return None


def write_note(dag_id: str, run_id: str, note: str, *, state: str | None = None) -> bool:
    """Set the run's note (and its state, when given) through the REST API; False — with the note in the log —
    when that is not possible (no API server under `dags test`, no credentials)."""
    body: dict[str, Any] = {"note": note[:MAX_NOTE_CHARS]} | ({"state": state} if state else {})
    try:
        with _api_client() as api:
            answer = api.patch(f"/dags/{dag_id}/dagRuns/{run_id}", params={"update_mask": list(body)}, json=body)
            answer.raise_for_status()
    except Exception as exc:
        log.warning("run note of %s not written (%s: %s); it reads:\n%s", run_id, type(exc).__name__, exc, note)
        return False
    log.info("run note of %s:\n%s", run_id, note)
    return True
