"""Alerts: what a failure or a missed deadline records, the local file notifier, which notifier a deployment gets."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest

from tasks.common.notifications import (
    ALERT_TOPIC_VAR,
    Alert,
    AlertNotifier,
    LocalAlertNotifier,
    SnsAlertNotifier,
    alert_notifier,
    default_alerts_path,
)
from tasks.common.settings import load_settings

LOG_URL = "http://airflow.example/dags/classify_images/runs/scheduled__2026-11-01/tasks/classify?try_number=3"


def task_failure_context(error: BaseException | None = None) -> dict:
    """What the task runner hands `on_failure_callback`, reduced to what an alert reads."""
    ti = SimpleNamespace(
        dag_id="classify_images",
        run_id="scheduled__2026-11-01",
        task_id="classify",
        map_index=4,
        try_number=3,
        log_url=LOG_URL,
    )
    return {"ti": ti, "exception": error or RuntimeError("endpoint returned {{ 500 }}")}


def deadline_context() -> dict:
    """What the scheduler stores for the triggerer when a deadline is missed (`Deadline.handle_miss`)."""
    return {
        "dag_run": {"dag_id": "classify_images", "dag_run_id": "scheduled__2026-11-01", "state": "running"},
        "deadline": {"id": "0193", "deadline_time": "2026-11-01T04:00:00+00:00"},
    }


def read_alerts(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_task_failure_is_written_as_one_json_line_and_logged_loudly(tmp_path: Path, caplog) -> None:
    alerts = tmp_path / "alerts" / "failures.jsonl"
    notifier = LocalAlertNotifier(path=str(alerts))
    with caplog.at_level(logging.ERROR, logger="tasks.common.notificationsNone"):
        notifier(task_failure_context())  # how the task runner calls it
        notifier(task_failure_context(ValueError("second")))
    first, second = read_alerts(alerts)
    assert first["kind"] == "task_failed"
    assert (first["dag_id"], first["task_id"], first["run_id"]) == (
        "classify_images",
        "classify",
        "scheduled__2026-11-01",
    )
    assert (first["map_index"], first["try_number"], first["url"]) == (4, 3, LOG_URL)
    assert first["error"] == "RuntimeError: endpoint returned {{ 500 }}"  # not rendered as a template
    assert second["error"] == "ValueError: second"
    assert "classify_images.classify [map 4] failed for good (try 3)" in caplog.text and LOG_URL in caplog.text


def test_a_long_error_is_truncated() -> None:
    alert = Alert.from_context(task_failure_context(RuntimeError("x" * 10_000)))
    assert alert.error is not None and len(alert.error) < 2100 and alert.error.endswith("…")


def fire_deadline(notifier: AlertNotifier) -> list[str]:
    """Run the notifier's deadline callback the way the triggerer does: the real CallbackTrigger imports the class
    from the stored path and awaits it with the stored kwargs and the scheduler's context. Returns the event states."""
    from airflow.triggers.callback import CallbackTrigger

    callback = notifier.deadline_alert(timedelta(hours=4), name="overdue").callback
    trigger = CallbackTrigger(callback.path, {**callback.kwargs, "context": deadline_context()})

    async def run() -> list[str]:
        return [event.payload["state"] async for event in trigger.run()]

    return asyncio.run(run())


def test_a_missed_deadline_runs_through_the_triggerers_callback_path(tmp_path: Path) -> None:
    alerts = tmp_path / "failures.jsonl"
    assert fire_deadline(LocalAlertNotifier(path=str(alerts))) == ["running", "success"]
    (alert,) = read_alerts(alerts)
    assert alert["kind"] == "deadline_missed" and alert["task_id"] is None
    assert (alert["dag_id"], alert["run_id"]) == ("classify_images", "scheduled__2026-11-01")
    assert alert["deadline"] == "2026-11-01T04:00:00+00:00"
    assert alert["url"].endswith("/dags/classify_images/runs/scheduled__2026-11-01")


def test_a_dag_with_the_nightly_deadline_parses_and_round_trips_through_serialisation() -> None:
    from airflow.sdk import dag, task
    from airflow.serialization.serialized_objects import DagSerialization

    from tasks.common.dag_defaults import NIGHTLY_RUN_BUDGET, default_args, nightly_deadline

    @dag(dag_id="nightly_probe", schedule="@daily", deadline=nightly_deadline(), default_args=default_args())
    def nightly_probe():
        @task(doc_md="probe")
        def step() -> None: ...

        step()

    serialized = DagSerialization.to_dict(nightly_probe())
    restored = DagSerialization.from_dict(serialized)
    (deadline,) = serialized["dag"]["deadline"]
    assert deadline["reference"] == {"reference_type": "DagRunQueuedAtDeadline"}
    assert deadline["interval"]["__data__"] == NIGHTLY_RUN_BUDGET.total_seconds()
    assert deadline["callback"]["__data__"] == {
        "path": "tasks.common.notifications.LocalAlertNotifier",
        "kwargs": {"path": None},
    }
    assert restored.tasks[0].has_on_failure_callback


def test_the_deployment_picks_sns_when_a_topic_is_configured(caplog) -> None:
    topic = "arn:aws:sns:eu-west-1:123456789012:ml-oncall"
    env = {"PIPELINE_BACKEND": "sagemaker", "PIPELINE_REGION": "eu-west-1"}
    notifier = alert_notifier(load_settings({**env, ALERT_TOPIC_VAR: topic}))
    assert isinstance(notifier, SnsAlertNotifier)
    assert notifier.callback_kwargs() == {"target_arn": topic, "aws_conn_id": "aws_default", "region_name": "eu-west-1"}

    assert isinstance(alert_notifier(load_settings({})), LocalAlertNotifier)
    with caplog.at_level(logging.WARNING, logger="tasks.common.notificationsNone"):
        assert isinstance(alert_notifier(load_settings(env)), LocalAlertNotifier)
    assert f"{ALERT_TOPIC_VAR} is not set" in caplog.text


def test_alerts_default_to_airflow_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    assert default_alerts_path() == tmp_path / "alerts" / "failures.jsonl"
    assert LocalAlertNotifier().alerts_path == default_alerts_path()
