"""Backfills for real: api-server, scheduler, dag-processor and triggerer (LocalExecutor, SQLite) run three nightly
partitions, each run ending with its run note (dt, images, statuses, verdict, $, model), then
`reprocess_behavior=completed` reruns them with identical outputs; then a day without images (its note, and "no data"
in Costs & quality: screenshots under test-artifacts/). Backfills are created through the
API server (as bin/demo-backfill does): a CLI writer beside the scheduler can hit SQLite's `database is locked`."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from support.digits import tiny_digits_model
from support.endpoints import committed, deploy_locally, stable
from tasks.common import storage
from tasks.common.local_airflow import create_backfill
from tasks.common.settings import load_settings
from tasks.model.demo_data import write_incoming
from tasks.serving.local import state_path
from tasks.serving.local_server import stop_local_server
from tests.e2e.airflow_stack import NO_SCHEDULED_NIGHTS, AirflowStack

# A hang guard above the named deadlines below (stack start, parse, two backfills), so they fire first and say what.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

DAG_ID = "classify_images"
DAYS = ["2026-11-02", "2026-11-03", "2026-11-04"]
EMPTY_DAY = "2026-11-05"  # no images: a run note saying so, "no data" on the dashboard
CONF = {"shard_size": 4, "concurrency": 2, "quality": {"on_violation": "warn"}}
# One backfill of the 3 partitions, from creation to `completed_at`: ~60 s on 2 idle cores (3 runs one after another,
# then the scheduler's 30 s mark-complete tick). 900 s: many times that on a saturated machine; past it, stuck.
BACKFILL_DONE_DEADLINE_S = 900.0


def backfill(api: httpx.Client, reprocess_behavior: str = "none", days: tuple[str, str] = (DAYS[0], DAYS[-1])) -> None:
    body = {
        "dag_id": DAG_ID,
        "from_date": f"{days[0]}T00:00:00Z",
        "to_date": f"{days[1]}T00:00:00Z",
        "max_active_runs": 1,
        "dag_run_conf": CONF,
        "reprocess_behavior": reprocess_behavior,
    }
    create_backfill(api, body)


def wait_for_backfills(api: httpx.Client, stack: AirflowStack) -> list[dict]:
    """Until every backfill of the DAG has `completed_at`; returns the DAG's runs. Fails at the first failed task."""
    seen = {"runs": ""}

    def done() -> list[dict] | None:
        backfills = api.get("/backfills", params={"dag_id": DAG_ID}).raise_for_status().json()["backfills"]
        runs = api.get(f"/dags/{DAG_ID}/dagRuns").raise_for_status().json()["dag_runs"]
        broken = api.get(f"/dags/{DAG_ID}/dagRuns/~/taskInstances", params={"state": ["failed", "up_for_retry"]})
        failed = [(ti["run_id"], ti["task_id"]) for ti in broken.raise_for_status().json()["task_instances"]]
        assert not failed, f"failed tasks {failed}\n{stack.diagnostics()}"
        pending = [b["id"] for b in backfills if not b["completed_at"]]
        states = sorted(f"{r['logical_date'][:10]} {r['state']}" for r in runs)
        seen["runs"] = f"backfills not complete {pending}, runs {states}"
        return runs if backfills and not pending else None

    what = f"every backfill of {DAG_ID} to be marked complete"
    return stack.wait(done, what, BACKFILL_DONE_DEADLINE_S, "BACKFILL_DONE_DEADLINE_S", lambda: seen["runs"])


@pytest.mark.parametrize("airflow_stack", [NO_SCHEDULED_NIGHTS], indirect=True, ids=["local-sqlite"])
def test_backfill_create_then_reprocess_completed(airflow_stack: AirflowStack, tmp_path: Path) -> None:
    stack = airflow_stack
    settings = load_settings(stack.env)
    deploy_locally(settings, tiny_digits_model(tmp_path / "model"), "v-e2e")
    write_incoming(storage.root(settings) / storage.INCOMING, DAYS, list(range(12)))
    started = time.monotonic()
    try:
        with stack.client() as api:
            stack.wait_for_dags(api, DAG_ID)
            api.patch(f"/dags/{DAG_ID}", json={"is_paused": False}).raise_for_status()

            backfill(api)
            runs = wait_for_backfills(api, stack)
            first_s = time.monotonic() - started
            assert sorted(r["logical_date"][:10] for r in runs) == DAYS  # one run per dt, nothing else scheduled
            assert {r["run_type"] for r in runs} == {"backfill"} and {r["state"] for r in runs} == {"success"}
            before = {day: committed(stack.storage_root, day) for day in DAYS}
            for manifest, rows in before.values():
                assert manifest["rows"] == len(rows) == 4 == len({row["key"] for row in rows})
            for run in runs:  # issue 24: the run list says which day, how many images, what outcome, what cost
                assert run["note"].startswith(f"**dt={run['logical_date'][:10]} · 4 images · quality "), run["note"]
                assert "- model: `v-e2e`" in run["note"] and " · $0." in run["note"].splitlines()[0]

            backfill(api, "completed")  # created once the first one is marked complete (create_backfill waits)
            runs = wait_for_backfills(api, stack)
            assert len(runs) == 3 and {r["state"] for r in runs} == {"success"}

            backfill(api, days=(EMPTY_DAY, EMPTY_DAY))
            runs = wait_for_backfills(api, stack)
            (empty,) = [r for r in runs if r["logical_date"].startswith(EMPTY_DAY)]
            assert empty["state"] == "success", empty
            assert empty["note"].startswith(f"**dt={EMPTY_DAY} · NO IMAGES: nothing classified (quality no data)**")
            screenshots(stack, empty["dag_run_id"])
    finally:
        stop_local_server(state_path(settings))
    for day in DAYS:
        manifest, rows = committed(stack.storage_root, day)
        # The same rows, none duplicated; final rows carried over as they were, `invalid` ones (an untrained model's
        # garbage) asked again — greedy decoding gives the same answers.
        assert stable(rows) == stable(before[day][1])
        final = [row for row in before[day][1] if row["status"] not in ("invalid", "failed")]
        assert [row for row in rows if row["status"] not in ("invalid", "failed")] == final
        assert manifest["run"] != before[day][0]["run"] and manifest["carried"] == len(final)
    print(f"\nbackfill of 3 partitions: {first_s:.0f}s; with the reprocess: {time.monotonic() - started:.0f}s")


def screenshots(stack: AirflowStack, empty_run: str) -> None:
    """The run list (each row has its note behind a Note button), the zero-image day's run page with its note, and
    that day in Costs & quality, as an operator sees them."""
    from urllib.parse import quote

    from playwright.sync_api import expect

    from tests.e2e.browser import ARTIFACTS, browser_page, log_in

    with browser_page() as page:
        page.goto(stack.api_url + "/")
        log_in(page, stack)
        page.goto(f"{stack.api_url}/dags/{DAG_ID}/runs")
        expect(page.get_by_role("button", name="Note").first).to_be_visible()
        page.screenshot(path=ARTIFACTS / "ui_run_list.png", full_page=True)
        page.goto(f"{stack.api_url}/dags/{DAG_ID}/runs/{quote(empty_run, safe='')}")
        expect(page.get_by_text(f"dt={EMPTY_DAY} · NO IMAGES").first).to_be_visible()
        page.screenshot(path=ARTIFACTS / "ui_run_note_zero_image_day.png", full_page=True)
        page.goto(f"{stack.api_url}/plugin/costs-quality")
        expect(page.frame_locator("iframe").locator("#partitions")).to_contain_text("no data (no images)")
        page.screenshot(path=ARTIFACTS / "ui_dashboard_zero_image_day.png", full_page=True)
