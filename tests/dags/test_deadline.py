"""classify_images' DeadlineAlert and its sensor agree (issue 24): the deadline never pages a night that is still
waiting for late data as designed. Checked over the DAG's own parsed settings, not over copies of the numbers."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO_ROOT

_PROBE = r"""
import json, sys
from airflow.dag_processing.dagbag import DagBag
dag = DagBag(dag_folder=sys.argv[1]).dags["classify_images"]
wait = dag.params.get_param("late_data_wait_minutes")
sensor = dag.get_task("wait_for_partition")
print(json.dumps({
    "deadline_s": [d.interval.total_seconds() for d in dag.deadline],
    "wait_default_min": wait.value,
    "wait_max_min": wait.schema.get("maximum"),
    "sensor_timeout_s": sensor.timeout,
    "poke_s": sensor.poke_interval,
}))
"""


def test_the_deadline_pages_only_after_the_longest_late_data_wait_and_the_nights_work() -> None:
    from tasks.common.dag_defaults import NIGHTLY_WORK

    out = subprocess.run(
        [sys.executable, "-c", _PROBE, str(REPO_ROOT / "dags" / "classify_images.py")],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO_ROOT,
    )
    got = json.loads(out.stdout.strip().splitlines()[-1])
    print("deadline / late-data settings:", got)
    (deadline_s,) = got["deadline_s"]
    # A scheduled run is queued when its day ends; its sensor gives up `late_data_wait_minutes` later at most: the
    # param's maximum. The deadline leaves the night's work after that, and the default is within the maximum.
    assert got["wait_max_min"] is not None and got["wait_default_min"] <= got["wait_max_min"]
    assert deadline_s >= got["wait_max_min"] * 60 + NIGHTLY_WORK.total_seconds()
    assert deadline_s == 4 * 3600  # what the runbook and the README say
    # the sensor's own timeout (a safety net for dts it refuses at once) is no earlier than the longest wait
    assert got["sensor_timeout_s"] >= got["wait_max_min"] * 60 and got["poke_s"] < got["wait_max_min"] * 60
