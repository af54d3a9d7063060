"""The system Chromium through Playwright, as the browser tests drive it: one page, its timeouts, and the login."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from tests.e2e.airflow_stack import ADMIN_USER, AirflowStack

if TYPE_CHECKING:
    from playwright.sync_api import FrameLocator, Page

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"  # screenshots, for people to look at
CHROMIUM = "/usr/bin/chromium"
# Each Playwright step (a page load, a selector, an expectation) waits on the page's own state up to this: ~1-3 s on
# 2 idle cores (the UI's JavaScript on a busy API server); 120 s is a stuck page, not a slow one.
UI_STEP_DEADLINE_MS = 120_000
# Without the background-networking flags Chromium keeps dialling Google on a machine with no network.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextlib.contextmanager
def browser_page(height: int = 1000) -> Iterator[Page]:
    """A 1440-wide page of a headless system Chromium (never Playwright's own download), closed on exit."""
    from playwright.sync_api import expect, sync_playwright

    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: run bin/test-setup (Debian package chromium)"
    expect.set_options(timeout=UI_STEP_DEADLINE_MS)  # two busy cores: the UI can take a while to render a page
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": height})
            page.set_default_timeout(UI_STEP_DEADLINE_MS)
            yield page
        finally:
            browser.close()


def log_in(page: Page, stack: AirflowStack) -> None:
    """Sign in as the stack's admin on Airflow's login page (where an anonymous visit is sent)."""
    page.get_by_label("Username").fill(ADMIN_USER)
    page.get_by_label("Password").fill(stack.password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(lambda url: "/login" not in url)


def costs_quality_view(page: Page, stack: AirflowStack) -> FrameLocator:
    """Open Costs & quality inside the Airflow UI, signing in on the login page an anonymous visit is sent to; the
    view's iframe."""
    page.goto(stack.api_url + "/plugin/costs-quality")
    log_in(page, stack)
    page.wait_for_url("**/plugin/costs-quality")
    return page.frame_locator("iframe")
