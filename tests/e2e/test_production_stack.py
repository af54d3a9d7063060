"""`curate_dataset` on the production shape: api-server, scheduler, dag-processor, triggerer and a Celery worker
as separate processes, PostgreSQL metadata, Redis broker, triggered through the REST API like a user would."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.airflow_stack import CELERY_POSTGRES, AirflowStack
from tests.e2e.processes import describe

# A hang guard above the named deadlines (stack start, parse, the run), so they fire first and say what was awaited.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

DAG_ID = "curate_dataset"
GOOD_IMAGES = 30
BAD_FILES = {"3/not-an-image.png": b"hello, I am a text file\n" * 10, "4/empty.png": b""}
IGNORED_FILES = {".DS_Store": b"\0\0\0\1Bud1"}
VAL_FRACTION = 0.2  # 3 images per digit: the default 0.1 would leave the validation split empty
# The curate run, queued to success: ~20 s on 2 idle cores (Celery worker, 32 files). 600 s is many times that on a
# saturated machine; the wait follows the run's state and fails at once on a failed or retrying task.
RUN_DEADLINE_S = 600.0


def write_raw_drop(root: Path) -> None:
    """30 real digits in folder-per-label layout, plus files curation must reject or ignore."""
    from tasks.common.storage import storage_path
    from tasks.model.demo_data import write_labelled

    assert write_labelled(storage_path(root.as_uri()), range(GOOD_IMAGES)) == GOOD_IMAGES
    for rel, data in {**BAD_FILES, **IGNORED_FILES}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


def task_log(api: httpx.Client, run_id: str, task_id: str, try_number: int) -> str:
    """A task's log, one structured message per line (exceptions included), for failure messages."""
    path = f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}"
    response = api.get(path, headers={"Accept": "application/json"})
    if not response.is_success:
        return f"<no log for {task_id}: HTTP {response.status_code}>"
    keep = ("timestamp", "level", "event", "error_detail")
    lines = (m if isinstance(m, str) else {k: m[k] for k in keep if k in m} for m in response.json()["content"])
    return "\n".join(json.dumps(line, default=str) for line in lines)


def wait_for_run(api: httpx.Client, stack: AirflowStack, run_id: str) -> list[dict[str, Any]]:
    """Until the run succeeds; fail at the first failed or retrying task (retries wait minutes), with task logs."""
    run_path = f"/dags/{DAG_ID}/dagRuns/{run_id}"
    seen = {"states": ""}

    def succeeded() -> list[dict[str, Any]] | None:
        state = api.get(run_path).raise_for_status().json()["state"]
        tis = api.get(f"{run_path}/taskInstances").raise_for_status().json()["task_instances"]
        broken = [ti for ti in tis if ti["state"] in ("failed", "up_for_retry", "upstream_failed")]
        seen["states"] = f"run {state}, tasks { ({ti['task_id']: ti['state'] for ti in tis}) }"
        if state == "failed" or broken:
            logs = "\n".join(task_log(api, run_id, ti["task_id"], max(ti["try_number"], 1)) for ti in tis)
            pytest.fail(f"{seen['states']}\n--- task logs ---\n{logs}\n{stack.diagnostics()}")
        return tis if state == "success" else None

    return stack.wait(succeeded, f"run {run_id} to succeed", RUN_DEADLINE_S, "RUN_DEADLINE_S", lambda: seen["states"])


@pytest.mark.parametrize("airflow_stack", [CELERY_POSTGRES], indirect=True, ids=["celery-postgres"])
def test_curate_dataset_on_celery_postgres_stack(airflow_stack: AirflowStack) -> None:
    from datasets import load_from_disk

    stack = airflow_stack
    started = time.monotonic()
    raw = stack.storage_root / "raw" / "digits"
    dataset = stack.storage_root / "datasets" / "digits-e2e"
    write_raw_drop(raw)

    with stack.client() as api:
        stack.wait_for_dags(api, DAG_ID)
        api.patch(f"/dags/{DAG_ID}", json={"is_paused": False}).raise_for_status()
        conf = {"raw_uri": raw.as_uri(), "dataset_uri": dataset.as_uri(), "val_fraction": VAL_FRACTION}
        run = api.post(f"/dags/{DAG_ID}/dagRuns", json={"logical_date": None, "conf": conf}).raise_for_status()
        run_id = run.json()["dag_run_id"]
        (ti,) = wait_for_run(api, stack, run_id)
        xcom = api.get(
            f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{ti['task_id']}/xcomEntries/return_value"
        ).raise_for_status()
    run_s = time.monotonic() - started

    # It ran on the Celery worker: only that worker consumes the stack's private queue, and it logged the TI.
    assert ti["state"] == "success" and ti["queue"] == stack.queue
    worker_log = stack.component("celery-worker").log_text()
    assert any("Executing workload in Celery" in line and ti["id"] in line for line in worker_log.splitlines())

    # Every input accounted for; the DatasetDict on disk matches the report and the XCom.
    report = json.loads((dataset / "curation_report.json").read_text())
    counts = report["counts"]
    assert counts == {"kept": GOOD_IMAGES, "rejected": len(BAD_FILES), "ignored": len(IGNORED_FILES)}
    assert sum(counts.values()) == report["total"] == GOOD_IMAGES + len(BAD_FILES) + len(IGNORED_FILES)
    assert {r["path"] for r in report["rejected"]} == set(BAD_FILES)
    splits = load_from_disk(str(dataset))
    assert {name: len(split) for name, split in splits.items()} == report["splits"]
    assert sum(report["splits"].values()) == GOOD_IMAGES and all(report["splits"].values())
    assert {label for split in splits.values() for label in split["label"]} == set("0123456789")
    assert splits["train"][0]["images"][0].size == (32, 32)  # decodable pixels, not just metadata
    result = xcom.json()["value"]
    assert (result["dataset_uri"], result["counts"]) == (dataset.as_uri(), counts)
    assert result["fingerprint"] == report["fingerprint"] and report["options"]["val_fraction"] == VAL_FRACTION

    survivors = stack.stop()
    assert not survivors, f"processes outlived the stack:\n{describe(survivors)}"
    print(f"\ncurate_dataset on {stack.config.id}: run {run_s:.0f}s after the stack was healthy")
