"""The Review page on a real Airflow stack: the admin logs in through Airflow's login page in headless Chromium, opens
the Review tab of the Costs & quality view inside the Airflow UI, and with the keyboard only corrects two labels
and confirms one; the three decisions land in storage with the admin as reviewer. Anonymous, viewer and forged
(no or a wrong CSRF token, cross-origin, not JSON) decision requests are refused and write nothing.

The queue holds real demo digits committed for one day, plus a mislabel flag (no incoming file: "image not
available here"). The screenshot lands in test-artifacts/review_page.png.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tasks.common.storage import storage_path
from tasks.model.demo_data import known_label, write_incoming
from tasks.review import decisions, queue
from tasks.training.mislabels import FLAG_SCHEMA, FLAGS_FILE
from tests.e2e.airflow_stack import LOCAL_SQLITE, VIEWER_USER, AirflowStack, running_stack
from tests.e2e.browser import ARTIFACTS, browser_page, costs_quality_view

# A hang guard above the named deadlines (stack start, the page steps), so they fire first and say what.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

SCREENSHOT = ARTIFACTS / "review_page.png"
DAY = "2026-11-05"
MODEL_VERSION = "tiny-e2e"
REVIEW = "/costs-quality/review"


@dataclass(frozen=True)
class Queued:
    """One queued digit: its key, hash, true label and what the model answered."""

    key: str
    content_sha256: str
    truth: str
    label: str
    runner_up: str
    confidence: float


def other(label: str, shift: int) -> str:
    return str((int(label) + shift) % 10)


def prepare_queue(stack: AirflowStack) -> list[Queued]:
    """Five digits committed on DAY, queued as doubtful, least confident first: the first two answered wrongly
    (the second's runner-up is right), the third right; the rest stay pending. Plus one mislabel flag."""
    store = storage_path(stack.storage_uri)
    write_incoming(store / "incoming", [DAY], [1500, 1501, 1502, 1503, 1504])
    folder = stack.storage_root / "incoming" / f"dt={DAY}"
    queued = []
    for n, path in enumerate(sorted(folder.iterdir())):
        truth = known_label(path.name)
        label = truth if n == 2 else other(truth, 1)
        runner_up = truth if n == 1 else other(truth, 2)
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        queued.append(Queued(path.name, sha, truth, label, runner_up, round(0.2 + n / 10, 2)))
    rows = [
        {"key": q.key, "content_sha256": q.content_sha256, "status": "ok", "label": q.label,
         "confidence": q.confidence, "runner_up": q.runner_up, "model_version": MODEL_VERSION}
        for q in queued
    ]  # fmt: skip
    queue.enqueue_day(store, DAY, rows, budget=len(rows), golden=0)
    flag = {"schema": FLAG_SCHEMA, "sha256": "e" * 64, "path": "3/digit-0042.png", "given_label": "3",
            "suggested_label": "8", "suggested_probability": 0.93, "model_version": MODEL_VERSION}  # fmt: skip
    flags = stack.storage_root / "models" / MODEL_VERSION / FLAGS_FILE
    flags.parent.mkdir(parents=True)
    flags.write_text(json.dumps(flag) + "\n")
    queue.enqueue_flags(store, MODEL_VERSION)
    return queued


@pytest.fixture(scope="module")
def stack_with_queue(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AirflowStack, list[Queued]]]:
    with running_stack(LOCAL_SQLITE, tmp_path_factory.mktemp("review-page")) as stack:
        yield stack, prepare_queue(stack)


def decision_files(stack: AirflowStack) -> list[Path]:
    return sorted((stack.storage_root / "review" / "decisions").rglob("*.json"))


def test_an_admin_corrects_two_labels_and_confirms_one_with_the_keyboard(stack_with_queue) -> None:
    from playwright.sync_api import expect

    stack, queued = stack_with_queue
    first, second, third = queued[:3]
    SCREENSHOT.unlink(missing_ok=True)
    with browser_page(height=1300) as page:
        view = costs_quality_view(page, stack)
        expect(view.locator("#production-accuracy")).to_contain_text("no reviewed golden-sample images yet")
        view.locator("#nav-review").click()  # the Review tab, inside the Airflow UI's iframe
        items = view.locator("#queue .item")
        expect(items).to_have_count(6)
        expect(view.locator("#counter")).to_contain_text("0 reviewed this session / 6 pending")
        expect(items.nth(0).locator(".key")).to_have_text(first.key)  # the least confident first
        expect(items.nth(0).locator("img")).to_have_js_property("naturalWidth", 32)  # the digit, served and shown
        expect(items.nth(5).locator(".no-image")).to_have_text("image not available here")  # the flag
        expect(view.locator("#keys")).to_contain_text("confirm the model's label")

        items.nth(0).locator(".answer").click()  # focus the first item (and the frame); the rest is keys
        expect(items.nth(0)).to_be_focused()
        page.keyboard.press(first.truth)  # a digit: the label picker, with that label chosen
        expect(items.nth(0).locator(".picker")).to_be_focused()
        expect(items.nth(0).locator(".picker")).to_have_value(first.truth)
        page.keyboard.press("Enter")
        expect(items.nth(0).locator(".status")).to_have_text(f"correct: {first.truth} by admin")
        expect(items.nth(1)).to_be_focused()  # advanced to the next pending item
        page.keyboard.press("j")
        expect(items.nth(2)).to_be_focused()
        page.keyboard.press("k")
        expect(items.nth(1)).to_be_focused()
        page.keyboard.press("r")  # the runner-up
        expect(items.nth(1).locator(".status")).to_have_text(f"correct: {second.truth} by admin")
        expect(items.nth(2)).to_be_focused()
        page.keyboard.press("y")  # the model's label
        expect(items.nth(2).locator(".status")).to_have_text(f"confirm: {third.truth} by admin")
        expect(view.locator("#counter")).to_contain_text("3 reviewed this session / 3 pending")
        expect(items.nth(3)).to_be_focused()
        page.screenshot(path=SCREENSHOT, full_page=True)

    newest = decisions.reviewed_labels(storage_path(stack.storage_uri)).values()
    reviewed = {d.key: (d.label, d.verdict, d.predicted, d.reviewer, d.source) for d in newest}
    assert reviewed == {
        first.key: (first.truth, "correct", first.label, "admin", "review"),
        second.key: (second.truth, "correct", second.label, "admin", "review"),
        third.key: (third.truth, "confirm", third.label, "admin", "review"),
    }
    assert len(decision_files(stack)) == 3
    png = SCREENSHOT.read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 30_000, f"suspicious screenshot: {len(png)} bytes"


def review_page(stack: AirflowStack, user: str) -> str:
    page = httpx.get(stack.api_url + REVIEW, headers={"Authorization": f"Bearer {stack.token(user)}"}, timeout=60)
    assert page.status_code == 200, page.text
    return page.text


def page_token(html: str) -> str:
    match = re.search(r'data-csrf-token="([0-9]+\.[0-9a-f]{64})"', html)
    assert match, "the page carries no CSRF token"
    return match.group(1)


def test_anonymous_viewer_and_forged_decisions_are_refused_and_write_nothing(stack_with_queue) -> None:
    stack, queued = stack_with_queue
    before = decision_files(stack)
    url = stack.api_url + REVIEW + "/decisions"
    body = {"dt": DAY, "content_sha256": queued[4].content_sha256, "label": queued[4].truth}
    admin = {"Authorization": f"Bearer {stack.token()}"}
    token = page_token(review_page(stack, "admin"))

    def refused(expected: int, reason: str, **kwargs) -> None:
        response = httpx.post(url, timeout=60, **kwargs)
        assert response.status_code == expected and reason in response.json()["detail"], response.text

    refused(401, "Not authenticated", json=body)
    assert httpx.get(stack.api_url + REVIEW, timeout=60).status_code == 401
    refused(403, "X-CSRF-Token", json=body, headers=admin)  # a valid bearer, no token
    refused(403, "X-CSRF-Token", json=body, cookies={"_token": stack.token()})  # the UI's cookie, no token
    refused(403, "X-CSRF-Token", json=body, headers={**admin, "X-CSRF-Token": "0" * 64})
    refused(403, "cross-origin", json=body, headers={**admin, "X-CSRF-Token": token, "Origin": "http://evil.example"})
    refused(403, "cross-site", json=body, headers={**admin, "X-CSRF-Token": token, "Sec-Fetch-Site": "cross-site"})
    as_form = {**admin, "X-CSRF-Token": token, "Content-Type": "application/x-www-form-urlencoded"}
    refused(403, "application/json", content=json.dumps(body), headers=as_form)
    viewer_page = review_page(stack, VIEWER_USER)  # may look, not decide: a read-only page without a token
    assert 'data-csrf-token=""' in viewer_page and 'id="read-only"' in viewer_page
    refused(403, "Forbidden", json=body, headers={"Authorization": f"Bearer {stack.token(VIEWER_USER)}"})
    assert decision_files(stack) == before
