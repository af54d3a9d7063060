"""What an operator does in the Airflow UI, in headless Chromium against real Airflow processes (one stack for the
module): log in; read each DAG's description in the DAG list; trigger each of six DAGs from its trigger form
with its default params; start a classify_images backfill from the backfill form; see a past-date run end failed
with a "NOTHING RAN" run note; approve a pending promotion under Required Actions with its confusion matrix
rendered and a comment kept in the registry; open a finished task's log; find the confusion matrix, the review and
working links (every one answers 200) in the Costs & quality view. The approved version is trained on a drop
with a reviewer's relabel folded in, and the registry names that review snapshot.

Kept fast: DAGs stay paused while their forms are tried (the runs are seen created, then deleted), and only one
finetune_llava run executes, on a curated drop of 60 digits for one epoch. Screenshots: test-artifacts/ui_*.png.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from urllib.parse import quote

import httpx
import pytest

from support.digits import curated_digits, relabel_training_digit
from tasks.common.storage import storage_path
from tasks.curation import reviewed
from tests.e2e.airflow_stack import ADMIN_USER, NO_SCHEDULED_NIGHTS, AirflowStack, running_stack
from tests.e2e.browser import ARTIFACTS, browser_page, log_in

# A hang guard above the named deadlines below (per test), so they fire first and say what was awaited.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

DAGS = [
    "curate_dataset",
    "finetune_llava",
    "deploy_endpoint",
    "teardown_endpoint",
    "classify_images",
    "publish_reviews",
]
BACKFILL_DAYS = ("2026/11/02", "2026/11/03")
FAST_TRAINING = {"num_train_epochs": 1, "logging_steps": 1}
# Every wait follows Airflow's state (a run in the API, a task's state) with a progress line every 15 s. Idle on 2
# cores: a triggered run is listed within ~1 s; the finetune run reaches its approval task in ~1-2 min (DeepSpeed,
# one epoch on 60 digits); an answer is recorded within seconds and promote runs ~30 s later. Each deadline is many
# times its idle figure: past it the run is stuck, not slow.
RUN_LISTED_DEADLINE_S = 120.0
APPROVAL_REQUEST_DEADLINE_S = 1200.0
ANSWER_RECORDED_DEADLINE_S = 300.0
PROMOTE_DEADLINE_S = 600.0
REVIEW_COMMENT = "matrix checked"
RELABELLED_DIGIT, RELABELLED_AS = 7, "1"  # digit 7 of the drop is a 7


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowStack]:
    with running_stack(NO_SCHEDULED_NIGHTS, tmp_path_factory.mktemp("operator-ui")) as stack:
        # A reviewer's relabel of one training digit, published, is folded into the dataset the approved run trains
        # on: the registry must name it (issue 22).
        root = storage_path(stack.storage_root.as_uri())
        relabel_training_digit(root, RELABELLED_DIGIT, RELABELLED_AS, ADMIN_USER)
        curated_digits(stack.storage_root / "datasets" / "digits-ui", 60, reviewed.load(root))
        with stack.client() as api:
            stack.wait_for_dags(api, *DAGS)
        yield stack


def runs(api: httpx.Client, dag_id: str) -> list[dict]:
    return api.get(f"/dags/{dag_id}/dagRuns").raise_for_status().json()["dag_runs"]


def task_state(api: httpx.Client, dag_id: str, run_id: str, task_id: str) -> str | None:
    response = api.get(f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances/{task_id}")
    return response.json().get("state") if response.status_code == 200 else None


@pytest.fixture(scope="module")
def page(stack: AirflowStack):
    with browser_page() as page:
        page.goto(stack.api_url + "/")
        log_in(page, stack)
        yield page


def open_trigger_form(page, stack: AirflowStack, dag_id: str):
    page.goto(f"{stack.api_url}/dags/{dag_id}")
    page.get_by_role("button", name="Trigger").first.click()
    dialog = page.get_by_role("dialog")
    unpause = dialog.get_by_text(f"Unpause {dag_id} on trigger")
    unpause.wait_for()
    unpause.click()  # keep the DAG paused: the run is created and waits, nothing executes
    return dialog


def test_the_dag_list_shows_what_each_dag_does(stack: AirflowStack, page) -> None:
    from playwright.sync_api import expect

    page.goto(f"{stack.api_url}/dags")
    with stack.client() as api:
        for dag_id in DAGS:
            description = api.get(f"/dags/{dag_id}").raise_for_status().json()["description"]
            assert description, dag_id
            page.get_by_test_id("dag-id").filter(has_text=dag_id).first.hover()  # the list shows it as a tooltip
            expect(page.get_by_text(description).first).to_be_visible()
            if dag_id == "classify_images":
                page.screenshot(path=ARTIFACTS / "ui_dag_list_description.png", full_page=True)


def test_a_run_before_the_start_date_ends_failed_with_a_nothing_ran_note(stack: AirflowStack, page) -> None:
    """Issue 24: such a run was "Success" with no task and no word in the UI; it must say it did nothing."""
    from playwright.sync_api import expect

    with stack.client() as api:
        api.patch("/dags/classify_images", json={"is_paused": False}).raise_for_status()  # catchup starts today
        try:
            body = {"logical_date": "2026-11-25T00:00:00+00:00", "conf": {}}
            run_id = api.post("/dags/classify_images/dagRuns", json=body).raise_for_status().json()["dag_run_id"]
            run = lambda: api.get(f"/dags/classify_images/dagRuns/{quote(run_id, safe='')}").json()  # noqa: E731
            stack.wait(
                lambda: run()["state"] == "failed" and (run().get("note") or "").startswith("**NOTHING RAN"),
                "the past-date run failed with its NOTHING RAN note",
                RUN_LISTED_DEADLINE_S * 2,
                "RUN_LISTED_DEADLINE_S * 2",
                lambda: f"state {run()['state']}, note {run().get('note')!r}",
            )
            note = run()["note"]
        finally:
            api.patch("/dags/classify_images", json={"is_paused": True}).raise_for_status()
    assert "dt=2026-11-25 is before the start date" in note
    assert "backfill create --dag-id classify_images --from-date 2026-11-25 --to-date 2026-11-25" in note
    page.goto(f"{stack.api_url}/dags/classify_images/runs/{quote(run_id, safe='')}")
    expect(page.get_by_text("NOTHING RAN").first).to_be_visible()
    page.screenshot(path=ARTIFACTS / "ui_past_date_nothing_ran.png", full_page=True)


def test_every_dag_is_triggered_from_its_form_with_the_default_params(stack: AirflowStack, page) -> None:
    from playwright.sync_api import expect

    with stack.client() as api:
        for dag_id in DAGS:
            before = {run["dag_run_id"] for run in runs(api, dag_id)}
            dialog = open_trigger_form(page, stack, dag_id)
            button = dialog.get_by_role("button", name="Trigger", exact=True)
            expect(button).to_be_enabled()  # no default param reads as a missing value
            page.screenshot(path=ARTIFACTS / f"ui_trigger_{dag_id}.png", full_page=True)
            button.click()
            expect(page.get_by_text("Dag Run Triggered").first).to_be_visible()
            created = stack.wait(
                lambda d=dag_id, b=before: {r["dag_run_id"] for r in runs(api, d)} - b,
                f"the {dag_id} run triggered from the form",
                RUN_LISTED_DEADLINE_S,
                "RUN_LISTED_DEADLINE_S",
            )
            for run_id in created:  # seen; deleted so that nothing of it runs later
                api.delete(f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}").raise_for_status()


def test_a_classify_images_backfill_is_started_from_the_backfill_form(stack: AirflowStack, page) -> None:
    from playwright.sync_api import expect

    dialog = open_trigger_form(page, stack, "classify_images")
    dialog.get_by_text("Backfill", exact=True).click()
    for i, day in enumerate(BACKFILL_DAYS):
        page.get_by_test_id("datetime-input").nth(i).click()
        picker = page.locator("[data-scope=popover][data-part=content][data-state=open]")
        picker.get_by_placeholder("YYYY/MM/DD").fill(day)
        picker.get_by_placeholder("HH:mm").fill("00:00")
        picker.get_by_placeholder("HH:mm").press("Enter")
    expect(dialog.get_by_text("2 runs will be triggered.")).to_be_visible()
    run = dialog.get_by_role("button", name="Run Backfill")
    expect(run).to_be_enabled()
    page.screenshot(path=ARTIFACTS / "ui_backfill_form.png", full_page=True)
    run.click()
    expect(page.get_by_text("Backfill generated").first).to_be_visible()
    with stack.client() as api:
        backfills = api.get("/backfills", params={"dag_id": "classify_images"}).raise_for_status().json()["backfills"]
        assert [(b["from_date"][:10], b["to_date"][:10]) for b in backfills] == [("2026-11-02", "2026-11-03")]
        api.put(f"/backfills/{backfills[0]['id']}/cancel").raise_for_status()  # the paused runs need not execute


@pytest.fixture(scope="module")
def approved_run(stack: AirflowStack, page) -> str:
    """A finetune_llava run with require_approval on, approved by a person in the UI; returns its run id."""
    from playwright.sync_api import expect

    conf = {
        "require_approval": True,
        "min_accuracy": 0.0,
        "hyperparameters": FAST_TRAINING,
        "dataset_uri": (stack.storage_root / "datasets" / "digits-ui").as_uri(),
    }
    with stack.client() as api:
        api.patch("/dags/finetune_llava", json={"is_paused": False}).raise_for_status()
        run_id = api.post("/dags/finetune_llava/dagRuns", json={"logical_date": None, "conf": conf}).raise_for_status()
        run_id = run_id.json()["dag_run_id"]
        state = lambda: task_state(api, "finetune_llava", run_id, "approve_promotion")  # noqa: E731
        promoted = lambda: task_state(api, "finetune_llava", run_id, "promote") == "success"  # noqa: E731
        # Under load, Airflow 3.3.2 can mark the resumed HITL task up_for_retry ("state changed externally": the
        # parked try's executor event races its resumption); the retry asks again. Answer what is pending, twice
        # at most, until promote has run.
        for answer in range(3):
            stack.wait(
                lambda: state() in ("awaiting_input", "failed") or promoted(),
                "the approval request (approve_promotion awaiting_input)",
                APPROVAL_REQUEST_DEADLINE_S,
                "APPROVAL_REQUEST_DEADLINE_S",
                lambda: f"approve_promotion {state()}",
            )
            if promoted():
                break
            assert answer < 2 and state() == "awaiting_input", stack.diagnostics()
            page.goto(f"{stack.api_url}/required_actions")
            page.get_by_text("Promote ").first.click()
            expect(page.get_by_text("The gate says:").first).to_be_visible()
            matrix = page.locator("img[alt^='confusion matrix of']").first
            expect(matrix).to_be_visible()  # issue 24: a 404 before evaluate registered the candidate
            matrix.scroll_into_view_if_needed()
            page.wait_for_function("img => img.complete", arg=matrix.element_handle())
            assert matrix.evaluate("img => img.naturalWidth") > 100, "the confusion matrix did not render"
            page.locator("#element_comment").fill(REVIEW_COMMENT)  # the form field of the `comment` param
            page.screenshot(path=ARTIFACTS / "ui_approval_request.png", full_page=True)
            page.get_by_role("button", name="Approve").first.click()
            stack.wait(
                lambda: state() != "awaiting_input",
                "the answer to be recorded",
                ANSWER_RECORDED_DEADLINE_S,
                "ANSWER_RECORDED_DEADLINE_S",
            )
            stack.wait(
                lambda: promoted() or state() in ("awaiting_input", "up_for_retry", "failed"),
                "promote to succeed",
                PROMOTE_DEADLINE_S,
                "PROMOTE_DEADLINE_S",
                lambda: f"approve_promotion {state()}, promote {task_state(api, 'finetune_llava', run_id, 'promote')}",
            )
    return run_id


def test_a_pending_promotion_is_approved_and_a_finished_tasks_log_opens(
    stack: AirflowStack, page, approved_run: str
) -> None:
    from playwright.sync_api import expect

    page.goto(f"{stack.api_url}/dags/finetune_llava/runs/{quote(approved_run, safe='')}/tasks/evaluate")
    expect(page.get_by_text("Log message source details").first).to_be_visible()  # the log file was found
    expect(page.get_by_text("Done. Returned value was").first).to_be_visible()
    assert page.get_by_text("Could not read served logs").count() == 0
    page.screenshot(path=ARTIFACTS / "ui_task_log.png", full_page=True)
    registry = json.loads((stack.storage_root / "models" / "registry.json").read_text())
    entry = registry["versions"][registry["production"]]
    assert (entry["status"], entry["run_id"], entry["dag_id"]) == ("production", approved_run, "finetune_llava")
    review = registry["reviews"][-1]
    assert (review["version"], review["decision"], review["by"]) == (registry["production"], "approved", ADMIN_USER)
    assert review["comment"] == REVIEW_COMMENT and review["at"]
    snapshot = json.loads(next((stack.storage_root / "review" / "published").glob("2*.json")).read_text())
    folded = entry["reviews"]
    assert (folded["snapshot"], folded["digest"]) == (snapshot["snapshot"], snapshot["digest"])
    assert (folded["used"], folded["relabelled"], folded["added"]) == (1, 1, 0)


def test_the_dashboard_shows_the_confusion_matrix_and_links_to_the_run(
    stack: AirflowStack, page, approved_run: str
) -> None:
    from playwright.sync_api import expect

    page.goto(f"{stack.api_url}/plugin/costs-quality")
    view = page.frame_locator("iframe")
    matrix = view.locator("#confusion-matrix")
    expect(matrix).to_be_visible()
    assert matrix.evaluate("img => img.complete && img.naturalWidth") > 100  # the PNG was served, behind the login
    expect(view.locator("#models")).to_contain_text("production")
    expect(view.locator("#per-class")).to_contain_text("support")
    expect(view.locator("#models")).to_contain_text(f"approved by {ADMIN_USER}")
    expect(view.locator("#serving")).to_contain_text("NOT serving")  # promoted; deploy_endpoint is paused
    page.screenshot(path=ARTIFACTS / "ui_dashboard.png", full_page=True)
    hrefs = view.locator("a[href]").evaluate_all("links => links.map(a => a.href)")
    with httpx.Client(cookies={"_token": stack.token()}, timeout=60) as browser_like:
        answers = {href: browser_like.get(href).status_code for href in set(hrefs)}
    assert answers and all(code == 200 for code in answers.values()), answers
    view.locator("#models a", has_text="run").first.click()
    page.wait_for_url(lambda url: "/dags/finetune_llava/runs/" in url)  # the UI itself navigates, not the iframe
    expect(page.get_by_text(approved_run).first).to_be_visible()
    page.screenshot(path=ARTIFACTS / "ui_run_from_dashboard.png", full_page=True)
