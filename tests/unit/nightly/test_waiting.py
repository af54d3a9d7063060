"""wait_for_partition (issue 18 item 5): every look says which dt, where and until when; a day whose wait could
only end after the sensor's timeout fails at once with that message instead of rescheduling for a day."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowFailException

from tasks.common.settings import load_settings
from tasks.nightly.steps import look_for_partition


def look(root: Path, dt: str, now: str):
    settings = load_settings({"PIPELINE_STORAGE_URI": root.as_uri()})
    params = {"incoming_uri": f"{root.as_uri()}/incoming/dt={{dt}}/", "late_data_wait_minutes": 120}
    day = datetime.fromisoformat(dt).replace(tzinfo=UTC)
    return look_for_partition(settings, params, day, day, now=datetime.fromisoformat(now))


def test_each_look_logs_the_dt_where_and_until_when(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="tasks.nightly.steps"):
        assert look(tmp_path, "2026-11-02", "2026-11-03T01:00:00+00:00") == (
            False,
            {"dt": "2026-11-02", "present": False},
        )
    expected = (
        f"dt=2026-11-02: no image yet under file://{tmp_path}/incoming/dt=2026-11-02; waiting until "
        "2026-11-03T02:00:00+00:00 (late_data_wait_minutes=120 after the day), next look in 0:05:00"
    )
    assert expected in caplog.text

    (tmp_path / "incoming" / "dt=2026-11-02").mkdir(parents=True)
    (tmp_path / "incoming" / "dt=2026-11-02" / "a.png").write_bytes(b"x")
    with caplog.at_level(logging.INFO, logger="tasks.nightly.steps"):
        assert look(tmp_path, "2026-11-02", "2026-11-03T01:00:00+00:00") == (
            True,
            {"dt": "2026-11-02", "present": True},
        )
    assert "dt=2026-11-02: images found under" in caplog.text


def test_after_the_late_data_wait_an_empty_day_is_done(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="tasks.nightly.steps"):
        assert look(tmp_path, "2026-11-02", "2026-11-03T02:00:00+00:00")[0] is True
    assert "a day with zero images" in caplog.text


def test_a_far_future_day_fails_at_once_saying_why(tmp_path: Path) -> None:
    with pytest.raises(AirflowFailException) as refused:
        look(tmp_path, "2031-02-02", "2026-12-02T17:00:00+00:00")
    message = str(refused.value)
    assert message.startswith(f"dt=2031-02-02: nothing under file://{tmp_path}/incoming/dt=2031-02-02")
    assert "until 2031-02-03T02:00:00+00:00" in message and "beyond this sensor's 1 day, 0:00:00 timeout" in message
    # the day before the deadline is within the timeout: it waits
    assert look(tmp_path, "2026-12-02", "2026-12-02T17:00:00+00:00")[0] is False


def test_a_run_made_during_its_days_says_it_processes_the_last_complete_day(tmp_path: Path, caplog) -> None:
    settings = load_settings({"PIPELINE_STORAGE_URI": tmp_path.as_uri()})
    params = {"incoming_uri": f"{tmp_path.as_uri()}/incoming/dt={{dt}}/", "late_data_wait_minutes": 120}
    now = datetime(2026, 12, 2, 14, 5, tzinfo=UTC)
    with caplog.at_level(logging.INFO, logger="tasks.nightly.steps"):
        done, found = look_for_partition(settings, params, now, now, now=now, run_after=now)
    assert (done, found) == (True, {"dt": "2026-12-01", "present": False})  # its late-data wait ended at 02:00
    assert "dt=2026-12-01: the logical date 2026-12-02T14:05:00+00:00 falls on a day that was not over" in caplog.text
    assert "a day with zero images" in caplog.text
