"""Alerts on a real stack: a task that fails for good and a run that overruns its deadline both reach on-call.

The failure callback runs in the task's process; the deadline is noticed by the scheduler and its callback awaited in
the triggerer. Both land in $AIRFLOW_HOME/alerts/failures.jsonl through the project's default_args/nightly_deadline.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.airflow_stack import AirflowStack, StackConfig, running_stack

# A hang guard above the named deadlines (stack start, parse, the alerts, the run's end), so they fire first.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

DAG_ID = "alert_probe"
# Both alerts in the file, from the trigger: ~20 s on 2 idle cores (the task fails at once; the scheduler notices
# the 5 s deadline on its next loop, the triggerer runs the callback). The run then ends once `hangs` has slept its
# 15 s. 300 s each: many times that on a saturated machine.
ALERTS_DEADLINE_S = 300.0
RUN_END_DEADLINE_S = 300.0
# The run is due 5 s after it was queued; one task fails at once, the other sleeps well past that. A failed run keeps
# its deadline (only success prunes it), so the alert fires however slow the machine is.
PROBE_DAG = f'''
import time
from datetime import timedelta

from airflow.sdk import dag, task

from tasks.common.dag_defaults import default_args, nightly_deadline


@dag(dag_id="{DAG_ID}", schedule=None, deadline=nightly_deadline(timedelta(seconds=5)),
     default_args=default_args(retries=0), doc_md="Fails one task and overruns its deadline with the other.")
def {DAG_ID}():
    @task(doc_md="Fails at once.")
    def breaks():
        raise RuntimeError("disk full, on purpose")

    @task(doc_md="Outlives the deadline, then ends (so the stack stops without waiting for it).")
    def hangs():
        time.sleep(15)

    breaks()
    hangs()


{DAG_ID}()
'''


@pytest.fixture
def stack_with_probe_dag(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowStack]:
    base = tmp_path_factory.mktemp("alerts")
    dags = base / "dags"
    dags.mkdir()
    (dags / f"{DAG_ID}.py").write_text(PROBE_DAG)
    config = StackConfig(env=(("AIRFLOW__CORE__DAGS_FOLDER", str(dags)),))
    with running_stack(config, base) as stack:
        yield stack


def read_alerts(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_failed_task_and_an_overdue_run_each_raise_an_alert(stack_with_probe_dag: AirflowStack) -> None:
    stack = stack_with_probe_dag
    alerts_file = stack.home / "alerts" / "failures.jsonl"
    with stack.client() as api:
        stack.wait_for_dags(api, DAG_ID)
        api.patch(f"/dags/{DAG_ID}", json={"is_paused": False}).raise_for_status()
        run = api.post(f"/dags/{DAG_ID}/dagRuns", json={"logical_date": None}).raise_for_status()
        run_id = run.json()["dag_run_id"]

    stack.wait(
        lambda: {alert["kind"] for alert in read_alerts(alerts_file)} == {"task_failed", "deadline_missed"},
        "a task_failed and a deadline_missed alert",
        ALERTS_DEADLINE_S,
        "ALERTS_DEADLINE_S",
        lambda: f"alerts so far: {[alert['kind'] for alert in read_alerts(alerts_file)]}",
    )

    by_kind = {alert["kind"]: alert for alert in read_alerts(alerts_file)}
    failed, overdue = by_kind["task_failed"], by_kind["deadline_missed"]
    assert (failed["dag_id"], failed["task_id"], failed["run_id"]) == (DAG_ID, "breaks", run_id)
    assert failed["error"] == "RuntimeError: disk full, on purpose" and failed["try_number"] == 1
    assert failed["url"].startswith(f"{stack.api_url}/dags/{DAG_ID}/runs/")
    assert (overdue["dag_id"], overdue["run_id"], overdue["task_id"]) == (DAG_ID, run_id, None)
    assert overdue["url"].startswith(f"{stack.api_url}/dags/{DAG_ID}/runs/")
    assert "ALERT deadline_missed" in stack.component("triggerer").log_text()  # delivered by the triggerer

    with stack.client() as api:  # let the run end: the executor would otherwise hold up the stack's shutdown
        state = lambda: api.get(f"/dags/{DAG_ID}/dagRuns/{run_id}").raise_for_status().json()["state"]  # noqa: E731
        ended = stack.wait(
            lambda: (s := state()) in ("success", "failed") and s,
            f"run {run_id} to end",
            RUN_END_DEADLINE_S,
            "RUN_END_DEADLINE_S",
            lambda: f"run {state()}",
        )
    assert ended == "failed"
