"""Alerts for on-call: one record per failed task or missed deadline, delivered by the deployment's notifier.

Locally the record is appended to `$AIRFLOW_HOME/alerts/failures.jsonl` and logged at ERROR; in production it is
published to the SNS topic in `PIPELINE_ALERT_SNS_TOPIC_ARN`, which pages whoever subscribes. Both build the same
`Alert`, so a local failure shows exactly what production would page with.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote

from airflow.sdk import AsyncCallback, BaseNotifier, DeadlineAlert, DeadlineReference

from tasks.common.settings import Settings

if TYPE_CHECKING:
    from airflow.providers.amazon.aws.notifications.sns import SnsNotifier

log = logging.getLogger(__name__)

ALERT_TOPIC_VAR = "PIPELINE_ALERT_SNS_TOPIC_ARN"
ALERTS_FILE = Path("alerts") / "failures.jsonl"
MAX_ERROR_CHARS = 2000  # enough to triage; keeps a JSON line and an SNS message small
SNS_SUBJECT_MAX = 100  # SNS rejects longer subjects

AlertKind = Literal["task_failed", "deadline_missed"]


@dataclass(frozen=True)
class Alert:
    kind: AlertKind
    dag_id: str
    run_id: str
    url: str  # where on-call clicks first: the task's log, or the run
    task_id: str | None = None
    map_index: int | None = None
    try_number: int | None = None
    error: str | None = None
    deadline: str | None = None
    at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @classmethod
    def from_context(cls, context: Mapping[str, Any]) -> Alert:
        """From a task's failure context (task runner), or the triggerer's plain-dict context of a missed deadline."""
        if "deadline" in context:
            run = context["dag_run"]
            return cls(
                kind="deadline_missed",
                dag_id=run["dag_id"],
                run_id=run["dag_run_id"],
                url=_run_url(run["dag_id"], run["dag_run_id"]),
                deadline=str(context["deadline"]["deadline_time"]),
            )
        ti = context["ti"]
        return cls(
            kind="task_failed",
            dag_id=ti.dag_id,
            run_id=ti.run_id,
            url=ti.log_url,
            task_id=ti.task_id,
            map_index=ti.map_index if ti.map_index is not None and ti.map_index >= 0 else None,
            try_number=ti.try_number,
            error=_describe(context.get("exception")),
        )

    @property
    def subject(self) -> str:
        if self.kind == "deadline_missed":
            return f"[airflow] {self.dag_id} run not finished by its deadline"[:SNS_SUBJECT_MAX]
        return f"[airflow] {self.dag_id}.{self.task_id} failed"[:SNS_SUBJECT_MAX]

    def text(self) -> str:
        """The human-readable message: what broke, where to look, and the runbook pointer."""
        if self.kind == "deadline_missed":
            head = f"DAG {self.dag_id} run {self.run_id} was still not finished at its deadline {self.deadline}."
        else:
            mapped = f" [map {self.map_index}]" if self.map_index is not None else ""
            head = (
                f"Task {self.dag_id}.{self.task_id}{mapped} failed for good (try {self.try_number}) "
                f"in run {self.run_id}: {self.error}"
            )
        return f"{head}\nOpen: {self.url}\nRunbook: the DAG's and the task's docs in the Airflow UI."


def _describe(error: BaseException | str | None) -> str | None:
    if error is None:
        return None
    text = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else str(error)
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS] + "…"


def _announce(context: Mapping[str, Any]) -> Alert:
    """The alert, logged at ERROR first: it reaches the component's log even if delivery fails."""
    alert = Alert.from_context(context)
    log.error("ALERT %s: %s", alert.kind, alert.text())
    return alert


def _run_url(dag_id: str, run_id: str) -> str:
    from airflow.sdk.configuration import conf

    base = conf.get("api", "base_url", fallback="http://localhost:8080/").rstrip("/")
    return f"{base}/dags/{quote(dag_id)}/runs/{quote(run_id)}"


class AlertNotifier(BaseNotifier):
    """Build the Alert, log it loudly, then `send` it. Task failures call `notify` (in the task's process); missed
    deadlines await the notifier in the triggerer (`async_notify`), rebuilt from `callback_kwargs`."""

    def notify(self, context: Any) -> None:
        self.send(_announce(context))

    async def async_notify(self, context: Any) -> None:
        await self.asend(_announce(context))

    def send(self, alert: Alert) -> None:
        raise NotImplementedError

    async def asend(self, alert: Alert) -> None:
        await asyncio.to_thread(self.send, alert)

    def callback_kwargs(self) -> dict[str, Any]:
        """JSON-serialisable constructor arguments: a deadline callback is stored as class path + kwargs."""
        raise NotImplementedError

    def deadline_alert(self, within: timedelta, name: str) -> DeadlineAlert:
        """Alert through this notifier when a run is not finished `within` after it was queued (any run type,
        backfills too: queued time, unlike the logical date, is never in the past)."""
        return DeadlineAlert(
            reference=DeadlineReference.DAGRUN_QUEUED_AT,
            interval=within,
            callback=AsyncCallback(type(self), kwargs=self.callback_kwargs()),
            name=name,
        )


class LocalAlertNotifier(AlertNotifier):
    """Appends one JSON line per alert: the file on-call (or a test) reads when no pager is configured."""

    def __init__(self, path: str | None = None, context: Any = None) -> None:
        super().__init__(context)
        self.path = path

    @property
    def alerts_path(self) -> Path:
        return Path(self.path) if self.path else default_alerts_path()

    def send(self, alert: Alert) -> None:
        path = self.alerts_path
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as out:  # one write per line: concurrent appends do not interleave
            out.write(json.dumps(asdict(alert)) + "\n")

    def callback_kwargs(self) -> dict[str, Any]:
        return {"path": self.path}


class SnsAlertNotifier(AlertNotifier):
    """Publishes through the Amazon provider's SnsNotifier; `kind` and `dag_id` go along as message attributes so
    subscriptions can filter (e.g. page on deadlines, e-mail task failures)."""

    def __init__(
        self,
        target_arn: str,
        aws_conn_id: str | None = "aws_default",
        region_name: str | None = None,
        context: Any = None,
    ) -> None:
        super().__init__(context)
        self.target_arn, self.aws_conn_id, self.region_name = target_arn, aws_conn_id, region_name

    def _sns(self, alert: Alert) -> SnsNotifier:
        from airflow.providers.amazon.aws.notifications.sns import SnsNotifier

        return SnsNotifier(
            aws_conn_id=self.aws_conn_id,
            region_name=self.region_name,
            target_arn=self.target_arn,
            message=alert.text(),
            subject=alert.subject,
            message_attributes={"kind": alert.kind, "dag_id": alert.dag_id},
        )

    # SnsNotifier's own methods, not its __call__: that would render the message as a Jinja template, and an
    # exception text may well contain "{{".
    def send(self, alert: Alert) -> None:
        self._sns(alert).notify({})

    async def asend(self, alert: Alert) -> None:
        await self._sns(alert).async_notify({})

    def callback_kwargs(self) -> dict[str, Any]:
        return {"target_arn": self.target_arn, "aws_conn_id": self.aws_conn_id, "region_name": self.region_name}


def default_alerts_path() -> Path:
    """`$AIRFLOW_HOME/alerts/failures.jsonl` (Airflow's own default home when unset): local to every component."""
    return Path(os.environ.get("AIRFLOW_HOME") or "~/airflow").expanduser() / ALERTS_FILE


def alert_notifier(settings: Settings) -> AlertNotifier:
    """SNS when a topic is configured, else the local file; production without a topic is allowed but warned
    about, so a missing setting never stops every DAG from loading."""
    if settings.alert_sns_topic_arn:
        return SnsAlertNotifier(
            target_arn=settings.alert_sns_topic_arn, aws_conn_id=settings.aws_conn_id, region_name=settings.region
        )
    if settings.requires_pager:
        log.warning(
            "%s is not set: failures are logged and written to %s only; nobody is paged",
            ALERT_TOPIC_VAR,
            default_alerts_path(),
        )
    return LocalAlertNotifier()
