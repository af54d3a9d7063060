"""The Costs & quality page with a hostile ledger key, rendered by the plugin and opened in headless Chromium
(issue 18 item 6): the bad row is shown as such, the rest renders, and no script from storage runs. The full
stack with Airflow's login is tests/e2e/test_costs_view.py; the screenshot lands in
test-artifacts/costs_view_hostile_key.png."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

from tasks.costs.ledger import LedgerEntry, record
from tests.unit.dashboard.test_view_data import storage_root  # noqa: F401 — a fixture: two nights and a promoted model
from tests.unit.plugins.test_costs_quality import plugin  # noqa: F401 — the plugin module, loaded as Airflow does

pytestmark = pytest.mark.slow
CHROMIUM = "/usr/bin/chromium"
SCREENSHOT = Path(__file__).resolve().parents[3] / "test-artifacts" / "costs_view_hostile_key.png"
HOSTILE = "2031-02-02<script>alert(1)</script><img src=x onerror=alert(2)>"


def test_a_hostile_ledger_key_renders_as_a_bad_row_in_a_browser(plugin: ModuleType, storage_root, tmp_path) -> None:  # noqa: F811
    from playwright.sync_api import expect, sync_playwright

    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: run bin/test-setup (Debian package chromium)"
    record(
        storage_root / "costs",
        LedgerEntry(
            kind="classification",
            key=HOSTILE,
            backend="local",
            region="local",
            instance_type="local",
            instance_count=1,
            billable_seconds=1,
            price_per_hour_usd=0.1,
            model_version="v2",
            images=1,
            images_ok=1,
        ),
    )
    page_file = tmp_path / "costs_quality.html"
    page_file.write_text(plugin.render_page(storage_root))
    dialogs: list[str] = []
    SCREENSHOT.parent.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1100})
            page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
            page.goto(page_file.as_uri())
            bad = page.locator("#partitions tr", has_text="bad record")
            expect(bad).to_have_count(1)
            expect(bad).to_contain_text(HOSTILE)  # shown as text, exactly as stored
            for text in ("2026-11-02", "2026-11-01", "$0.2636"):
                expect(page.locator("#partitions")).to_contain_text(text)
            expect(page.locator("#last-partition")).to_contain_text("dt=2026-11-02")  # never the hostile key
            expect(page.locator(".chart svg")).to_be_visible()
            page.screenshot(path=SCREENSHOT, full_page=True)
        finally:
            browser.close()
    assert dialogs == []  # neither the <script> nor the onerror ran
