"""The "Costs & quality" plugin without a running Airflow: how Airflow loads it, what the page renders, and that the
app refuses anonymous requests (the logged-in path runs on a real stack in tests/e2e/test_costs_view.py)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import REPO_ROOT
from tests.unit.dashboard.test_view_data import storage_root  # noqa: F401 — a fixture: two nights and a promoted model

PLUGINS = REPO_ROOT / "plugins"

# Load the plugins folder the way every Airflow process does (each task's too), and report what that imported.
_PROBE = r"""
import json, sys
from airflow import plugins_manager
before = set(sys.modules)
plugins, errors = plugins_manager._get_plugins()
apps, _ = plugins_manager.get_fastapi_plugins()
views, _ = plugins_manager._get_ui_plugins()
heavy = ("fastapi", "starlette", "duckdb", "pyarrow", "matplotlib", "tasks", "airflow.api_fastapi.core_api.security")
print(json.dumps({
    "errors": errors,
    "apps": [{k: str(v) for k, v in app.items()} for app in apps],
    "views": views,
    "heavy": sorted(m for m in set(sys.modules) - before if m.startswith(heavy)),
}))
"""


@pytest.fixture(scope="module")
def plugin() -> ModuleType:
    spec = importlib.util.spec_from_file_location("costs_quality", PLUGINS / "costs_quality.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_airflow_loads_the_plugin_without_importing_anything_heavy() -> None:
    env = {**os.environ, "AIRFLOW__CORE__PLUGINS_FOLDER": str(PLUGINS), "PYTHONPATH": str(REPO_ROOT)}
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, env=env, cwd=REPO_ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert loaded["errors"] == {}
    assert [(app["url_prefix"], app["name"]) for app in loaded["apps"]] == [("/costs-quality", "Costs & quality")]
    assert loaded["views"] == [
        {
            "name": "Costs & quality",
            "href": "costs-quality/",
            "url_route": "costs-quality",
            "destination": "nav",
            "nav_top_level": True,
        }
    ]
    assert loaded["heavy"] == []


def test_anonymous_and_forged_requests_are_refused(plugin: ModuleType) -> None:
    from fastapi.testclient import TestClient

    client = TestClient(plugin.BuiltOnFirstRequest(plugin.build_app))  # as the plugin mounts it
    refused = client.get("/")
    assert refused.status_code == 401
    assert refused.headers["X-Content-Type-Options"] == "nosniff"  # security headers on every response
    assert refused.headers["X-Frame-Options"] == "SAMEORIGIN"
    csp = refused.headers["Content-Security-Policy"]
    assert "frame-ancestors 'self'" in csp and "default-src 'none'" in csp
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]
    assert client.get("/", headers={"Authorization": "Basic YWRtaW46YWRtaW4="}).status_code == 401
    assert client.get("/openapi.json").status_code == 404  # no unauthenticated side door


def test_the_page_shows_the_numbers_and_a_chart(plugin: ModuleType, storage_root) -> None:  # noqa: F811
    html = plugin.render_page(storage_root)
    for text in ("2026-11-02", "1,000", "0.5%", "$0.2636", "97.2%", "v2", "2 × ml.g5.12xlarge (spot)", "$21.27"):
        assert text in html, text
    assert html.count("<svg") == 1 and "<?xml" not in html


def test_an_empty_storage_root_renders_empty_states(plugin: ModuleType, tmp_path: Path) -> None:
    from tasks.common.storage import storage_path

    html = plugin.render_page(storage_path(tmp_path.as_uri()))
    assert "No model promoted yet." in html and "No classification rows in the ledger yet." in html
    assert html.count("no reviewed golden-sample images yet") == 2  # the card and the weekly table
    assert "<svg" not in html


def test_production_accuracy_shows_beside_the_held_out_accuracy(plugin: ModuleType, storage_root) -> None:  # noqa: F811
    import re

    from tests.unit.dashboard.test_view_data import reviewed_queue

    reviewed_queue(storage_root)
    html = plugin.render_page(storage_root)
    card = html[html.index('id="production-accuracy"') : html.index('id="last-partition"')]
    assert "100.0%" in card and "2026-W46: 1 of 1 golden images confirmed" in card
    assert "95% interval 20.7% – 100.0%" in card and "held-out 97.2%" in card
    weeks = html[html.index('id="accuracy-weeks"') : html.index('id="review-queue"')]
    cells = [re.findall(r"<td>(.*?)</td>", row) for row in weeks.split("<tr>")[2:]]
    assert cells == [
        ["2026-W46", "1", "1", "100.0%", "20.7% – 100.0%", "—", "97.2%"],
        ["2026-W45", "3", "2", "66.7%", "20.8% – 93.9%", "—", "97.2%"],
    ]
    queued = html[html.index('id="review-queue"') :]
    assert "<td>golden sample</td><td>1</td><td>4</td>" in queued
    assert 'href="review"' in html  # the navigation to the Review page


def test_a_label_matplotlib_would_parse_as_mathtext_is_drawn_as_text(plugin: ModuleType) -> None:
    """Issue 9: `$\\frac{1}$` made matplotlib raise (invalid mathtext) and broke the whole page."""
    from tasks.dashboard.view_data import PartitionRow

    labels = ("2026-11-02", "$\\frac{1}$", "cost $5 vs $6")
    svg = plugin.chart_svg([PartitionRow(label, 10, 9, 1, 0, 0, 0.01, 1.0, "v1") for label in labels])
    assert all(label in svg for label in labels)


def test_hostile_labels_versions_and_storage_contents_are_escaped(plugin: ModuleType, storage_root) -> None:  # noqa: F811
    from support.registry import register
    from tasks.costs.ledger import LedgerEntry, record
    from tasks.training.registry import promote_if_better

    evil = '"><script>alert(1)</script>'
    models = storage_root / "models"
    metrics = {"accuracy": 0.95, "macro_f1": 0.9, "invalid_rate": 0.0}
    register(
        models,
        evil,
        evil,
        taxonomy="hotel",
        prompt=evil,
        metrics=metrics,
        promote=False,
        dag_id="finetune_llava",
        run_id=evil,
    )
    promote_if_better(models, evil, min_accuracy=0.9, tolerance=0.5)
    (models / evil).mkdir(parents=True, exist_ok=True)
    (models / evil / "metrics.json").write_text(
        json.dumps(
            {"per_class": {f"<img src=x onerror=alert(2)>{evil}": {"precision": 1, "recall": 1, "f1": 1, "support": 1}}}
        )
    )
    record(
        storage_root / "costs",
        LedgerEntry(
            kind="classification",
            key="2026-11-03",
            backend="local",
            region="local",
            instance_type="local",
            instance_count=1,
            billable_seconds=1,
            price_per_hour_usd=0.1,
            model_version=evil,
            images=1,
            images_ok=1,
            run_id=evil,
        ),
    )
    html = plugin.render_page(storage_root, evil)
    assert "<script>" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "&lt;img src=x onerror=alert(2)&gt;" in html
    assert 'href="../dags/classify_images/runs/%22%3E%3Cscript%3Ealert%281%29%3C%2Fscript%3E"' in html
    assert 'src="models/%22%3E%3Cscript%3Ealert%281%29%3C%2Fscript%3E/confusion_matrix.png"' in html


def test_the_confusion_matrix_route_is_behind_the_same_auth(plugin: ModuleType) -> None:
    from fastapi.testclient import TestClient

    client = TestClient(plugin.BuiltOnFirstRequest(plugin.build_app))
    assert client.get("/models/v2/confusion_matrix.png").status_code == 401


def assert_secured(response) -> None:
    for name, value in SECURITY_HEADERS_OF(response).items():
        assert response.headers.get(name) == value, name


def SECURITY_HEADERS_OF(response) -> dict:
    return sys.modules["costs_quality_under_test"].SECURITY_HEADERS


@pytest.mark.parametrize("where", ["route", "build"])
def test_an_error_still_carries_the_security_headers(plugin: ModuleType, where: str) -> None:
    """Issue 18 item 6: the 500 came from Starlette's outermost error middleware, past the app's own middleware."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    def build():
        if where == "build":
            raise RuntimeError("storage unreachable")
        app = FastAPI()

        @app.get("/")
        def broken() -> None:
            raise ValueError("a bad record")

        return app

    response = TestClient(plugin.BuiltOnFirstRequest(build), raise_server_exceptions=False).get("/")
    assert response.status_code == 500 and "a bad record" not in response.text
    assert {name: response.headers.get(name) for name in plugin.SECURITY_HEADERS} == plugin.SECURITY_HEADERS


def test_a_hostile_ledger_dt_is_a_bad_row_and_the_rest_of_the_page_renders(plugin: ModuleType, storage_root) -> None:  # noqa: F811
    """Issue 18 item 6: one ledger key that is not a date (`date.fromisoformat` in with_gaps) made the view a 500."""
    from tasks.costs.ledger import LedgerEntry, record

    for key in ("2031-02-02<script>alert(1)</script>", "../../models", "9999-12-31"):
        record(
            storage_root / "costs",
            LedgerEntry(
                kind="classification",
                key=key,
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
    html = plugin.render_page(storage_root)
    assert "<script>alert" not in html and "2031-02-02&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert html.count("bad record") == 2  # the two keys that are not days, shown as such
    for text in ("2026-11-02", "2026-11-01", "9999-12-31", "$0.2636", "97.2%"):  # the rest renders
        assert text in html, text
