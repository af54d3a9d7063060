"""The "Costs & quality" view on a real Airflow stack, after a real run: anonymous requests are refused, and a user who
logs in through Airflow's login page in headless Chromium sees the numbers of the cost ledger and the model registry,
and a day that classify_backlog committed links to that classify_backlog run, which the link opens.

The screenshot lands in test-artifacts/costs_view.png.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx
import pytest

from tasks.common.storage import storage_path
from tasks.costs.ledger import Kind, LedgerEntry, query, record
from tasks.costs.pricing import hourly_price
from tasks.dashboard import view_data
from tasks.model.taxonomy import load_taxonomy
from tasks.serving.client import ClassificationResult, EndpointClient, EndpointSpec
from tests.e2e.airflow_stack import LOCAL_SQLITE, AirflowStack, running_stack
from tests.e2e.browser import ARTIFACTS, browser_page, costs_quality_view

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath
    from playwright.sync_api import FrameLocator, Page

# A hang guard above the named deadlines (stack start, parse, the page steps), so they fire first and say what.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

SCREENSHOT = ARTIFACTS / "costs_view.png"
VIEW = "/costs-quality/"
MODEL_VERSION = "tiny-untrained"
PARTITIONS = {"2026-11-01": range(1000, 1006), "2026-11-02": range(1100, 1104)}  # dt -> demo digit indices
BACKLOG_DAY, BACKLOG_DIGITS = "2026-10-31", range(1200, 1203)  # a day of history, committed by classify_backlog
BACKLOG_RUN = "manual__e2e-backlog"  # its run: triggered (the DAG stays paused, so it only waits in the queue)


# -- the demo run ---------------------------------------------------------------------------------------------------


def run_demo(stack: AirflowStack) -> None:
    """Produce what a night of the pipeline leaves in storage: ledger rows and a promoted model.

    THE SEAM: until finetune_llava / deploy_endpoint / classify_images land, this runs their real pieces at task
    level (real curation, a real vLLM server, real classification requests, real ledger writes). Replace
    this body with triggering curate_dataset → … → classify_images through `stack.client()`; the tests below only
    read what lands in `stack.storage_root`.
    """
    from datasets import load_from_disk

    from support.registry import register
    from tasks.common.settings import load_settings
    from tasks.curation.curate import CurationOptions, curate_uri
    from tasks.model.demo_data import digits, write_labelled
    from tasks.model.images import encode_png
    from tasks.model.tiny_model import build_tiny_llava
    from tasks.model.vision_tokens import TINY_GEOMETRY, ResizePolicy
    from tasks.serving.local_server import start_local_server, stop_local_server
    from tasks.training.evaluation import compute_metrics

    local, store = stack.storage_root, storage_path(stack.storage_uri)
    taxonomy = load_taxonomy("digits")
    policy = ResizePolicy(geometry=TINY_GEOMETRY)
    raw, dataset = local / "raw/digits", local / "datasets/digits-demo"
    write_labelled(store / "raw/digits", range(40))
    settings = load_settings({"PIPELINE_STORAGE_URI": stack.storage_uri})
    curate_uri(raw.as_uri(), dataset.as_uri(), taxonomy, CurationOptions(resize_policy=policy), settings=settings)

    started = time.monotonic()
    corpus = [taxonomy.prompt(), *(taxonomy.answer(label) for label in taxonomy.labels)]
    model_dir = build_tiny_llava(local / "models" / MODEL_VERSION / "model", corpus)
    record_cost(store / "costs", "training", f"finetune-{MODEL_VERSION}", time.monotonic() - started, [])

    server_state = local / "serving/local_server.json"
    server = start_local_server(model_dir, server_state)
    try:
        client = EndpointClient(EndpointSpec("openai_http", url=server.base_url), taxonomy, policy=policy)
        test_rows = list(load_from_disk(str(dataset))["test"])
        evaluation = classify(client, [(str(i), encode_png(row["images"][0])) for i, row in enumerate(test_rows)])
        answers = [{"label": test_rows[int(r.key)]["label"], "answer": r.raw_answer} for r in evaluation.results]
        metrics = compute_metrics(answers, taxonomy)
        register(store / "models", MODEL_VERSION, model_dir.as_uri(), taxonomy=taxonomy.name, metrics=metrics)
        for dt, indices in PARTITIONS.items():
            night = classify(client, [(f"dt={dt}/digit-{d.index}.png", encode_png(d.image)) for d in digits(indices)])
            record_cost(store / "costs", "classification", dt, night.seconds, night.results, "classify_images")
        history = [(f"dt={BACKLOG_DAY}/digit-{d.index}.png", encode_png(d.image)) for d in digits(BACKLOG_DIGITS)]
        day = classify(client, history)
        record_cost(store / "costs", "classification", BACKLOG_DAY, day.seconds, day.results, *trigger_backlog(stack))
    finally:
        stop_local_server(server_state)


@dataclass(frozen=True)
class Classified:
    results: list[ClassificationResult]
    seconds: float  # wall clock: what an endpoint is billed for


def classify(client: EndpointClient, images: list[tuple[str, bytes]]) -> Classified:
    async def run() -> list[ClassificationResult]:
        return [result async for result in client.classify_many(images, concurrency=2)]

    started = time.monotonic()
    results = asyncio.run(run())
    return Classified(results, time.monotonic() - started)


def trigger_backlog(stack: AirflowStack) -> tuple[str, str]:
    """(dag_id, run_id) of a real classify_backlog run, once the DAG is parsed."""
    with stack.client() as api:
        stack.wait_for_dags(api, "classify_backlog")
        api.patch("/dags/classify_backlog", json={"is_paused": True}).raise_for_status()  # the run only waits
        body = {"dag_run_id": BACKLOG_RUN, "logical_date": None}
        run = api.post("/dags/classify_backlog/dagRuns", json=body).raise_for_status().json()
    return run["dag_id"], run["dag_run_id"]


def record_cost(
    costs_root: ObjectStoragePath,
    kind: Kind,
    key: str,
    seconds: float,
    results: list[ClassificationResult],
    dag_id: str = "finetune_llava",
    run_id: str = "e2e-demo",
) -> None:
    """A ledger row the way the pipelines write them (run `run_id` of `dag_id`), priced as the local backend (`local`
    in the price table)."""
    statuses = [result.status for result in results]
    entry = LedgerEntry(
        kind=kind,
        key=key,
        backend="local",
        region="local",
        instance_type="local",
        instance_count=1,
        billable_seconds=seconds,
        price_per_hour_usd=hourly_price("local", "local", "training" if kind == "training" else "inference"),
        model_version=MODEL_VERSION,
        images=len(results),
        images_ok=statuses.count("ok"),
        images_invalid=statuses.count("invalid"),
        images_rejected=statuses.count("rejected"),
        images_failed=statuses.count("failed"),
        prompt_tokens=sum(result.prompt_tokens or 0 for result in results),
        completion_tokens=sum(result.completion_tokens or 0 for result in results),
        run_id=run_id,
        dag_id=dag_id,
    )
    record(costs_root, entry)


# -- the stack and the browser ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack_after_demo_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowStack]:
    with running_stack(LOCAL_SQLITE, tmp_path_factory.mktemp("costs-view")) as stack:
        run_demo(stack)
        yield stack


def expected_texts(stack: AirflowStack) -> dict[str, list[str]]:
    """What the page must show, per section, computed from the ledger and the registry directly (not by the view)."""
    store = storage_path(stack.storage_uri)
    rows = query(store / "costs", "SELECT * FROM ledger WHERE kind = 'classification' ORDER BY key DESC")
    assert [row["key"] for row in rows] == sorted([*PARTITIONS, BACKLOG_DAY], reverse=True)
    registry = json.loads((stack.storage_root / "models/registry.json").read_text())
    model = registry["versions"][registry["production"]]["metrics"]
    partitions = [
        [
            row["key"],
            view_data.thousands(row["images"]),
            view_data.percent(row["images_invalid"] / row["images"]),
            view_data.usd(row["cost_usd"]),
            view_data.usd(row["usd_per_1000_images"]),
        ]
        for row in rows
    ]
    assert all(row["images"] == len({**PARTITIONS, BACKLOG_DAY: BACKLOG_DIGITS}[row["key"]]) for row in rows)
    return {
        "#partitions": [text for row in partitions for text in row],
        "#last-partition": [f"dt={rows[0]['key']}", view_data.usd(rows[0]["usd_per_1000_images"])],
        "#model": [view_data.percent(model["accuracy"]), registry["production"]],
        "#training": [f"finetune-{MODEL_VERSION}"],
    }


def test_anonymous_requests_are_refused(stack_after_demo_run: AirflowStack) -> None:
    url = stack_after_demo_run.api_url + VIEW
    assert httpx.get(url, timeout=60).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer not-a-jwt"}, timeout=60).status_code == 403
    assert httpx.get(url, cookies={"_token": "forged"}, timeout=60).status_code in (401, 403)
    authorised = httpx.get(url, headers={"Authorization": f"Bearer {stack_after_demo_run.token()}"}, timeout=60)
    assert authorised.status_code == 200 and "Costs &amp; quality" in authorised.text


def test_a_logged_in_user_sees_the_real_numbers_in_the_airflow_ui(stack_after_demo_run: AirflowStack) -> None:
    from playwright.sync_api import expect

    stack = stack_after_demo_run
    expected = expected_texts(stack)
    SCREENSHOT.unlink(missing_ok=True)
    with browser_page(height=1100) as page:
        view = costs_quality_view(page, stack)
        for section, texts in expected.items():
            for text in texts:
                expect(view.locator(section)).to_contain_text(text)
        expect(view.locator(".chart svg")).to_be_visible()
        page.screenshot(path=SCREENSHOT, full_page=True)
        opens_the_backlog_run(page, view, stack)
    png = SCREENSHOT.read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 30_000, f"suspicious screenshot: {len(png)} bytes"


def opens_the_backlog_run(page: Page, view: FrameLocator, stack: AirflowStack) -> None:
    """The backlog day's run link names classify_backlog's run (not classify_images'), and clicking it opens that
    run's page in the Airflow UI, for a run the API knows."""
    from playwright.sync_api import expect

    run_path = f"dags/classify_backlog/runs/{BACKLOG_RUN}"
    link = view.locator("#partitions tr", has_text=BACKLOG_DAY).get_by_role("link", name="run")
    assert link.get_attribute("href") == f"../{run_path}"
    nightly = view.locator("#partitions tr", has_text="2026-11-02").get_by_role("link", name="run")
    assert nightly.get_attribute("href") == "../dags/classify_images/runs/e2e-demo"
    with stack.client() as api:
        run = api.get(f"/dags/classify_backlog/dagRuns/{BACKLOG_RUN}").raise_for_status().json()
    assert (run["dag_id"], run["dag_run_id"]) == ("classify_backlog", BACKLOG_RUN)
    link.click()
    page.wait_for_url(f"**/{run_path}")
    expect(page.get_by_text(BACKLOG_RUN).first).to_be_visible()
    page.screenshot(path=ARTIFACTS / "costs_view_backlog_run.png", full_page=True)
