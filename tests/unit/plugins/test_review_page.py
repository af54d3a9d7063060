"""The Review page through the plugin's HTTP layer, as the API server mounts it: what it lists, what one decision POST
writes, and every refusal (anonymous, a viewer, a forged or cross-site POST, an unknown item, a label outside the
taxonomy, an image whose queued key leaves its folder or is a symlink).

The signed-in user is injected by overriding Airflow's `get_user` dependency (the token → user step; the
SimpleAuthManager still decides what that role may do). The real login, cookie and token path runs in
tests/e2e/test_review_page.py.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
from fastapi.testclient import TestClient

from tasks.common.storage import storage_path
from tasks.model.demo_data import digits
from tasks.model.images import encode_png
from tasks.review import decisions, page, queue
from tests.unit.plugins.test_costs_quality import plugin  # noqa: F401 — the plugin module, loaded as Airflow does

DAY = "2026-11-05"
HOSTILE_KEY = "<script>alert(1)</script>.png"
ORIGIN = "http://testserver"  # TestClient's host


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A storage root (the plugin's PIPELINE_STORAGE_URI) with three queued digits, their incoming files written."""
    monkeypatch.setenv("PIPELINE_STORAGE_URI", tmp_path.as_uri())
    monkeypatch.setenv("PIPELINE_TAXONOMY", "digits")
    store = storage_path(tmp_path.as_uri())
    rows = []
    for n, (digit, key) in enumerate(zip(digits([0, 1, 2]), ["a.png", "b.png", HOSTILE_KEY], strict=True)):
        data = encode_png(digit.image)
        path = tmp_path / "incoming" / f"dt={DAY}" / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        rows.append(row(key, hashlib.sha256(data).hexdigest(), label="7", confidence=0.3 + n / 10))
    queue.enqueue_day(store, DAY, rows, budget=10, golden=0)
    return store


def row(key: str, content_sha256: str, label: str = "7", confidence: float | None = 0.5) -> dict:
    return {
        "key": key,
        "content_sha256": content_sha256,
        "status": "ok",
        "label": label,
        "confidence": confidence,
        "runner_up": "1",
        "model_version": "v1",
    }


def client_as(plugin: ModuleType, role: str | None, name: str = "ana") -> TestClient:  # noqa: F811
    """A client signed in with `role` (a SimpleAuthManager role), or anonymous for None."""
    from airflow.api_fastapi.app import create_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from airflow.api_fastapi.core_api.security import get_user

    app = plugin.build_app()
    if role is not None:
        create_auth_manager()  # the configured one (SimpleAuthManager): the access checks ask it
        app.dependency_overrides[get_user] = lambda: SimpleAuthManagerUser(username=name, role=role)
    return TestClient(plugin.BuiltOnFirstRequest(lambda: app), base_url=ORIGIN)


@pytest.fixture
def as_role(plugin: ModuleType) -> Callable[..., TestClient]:  # noqa: F811
    return lambda role, name="ana": client_as(plugin, role, name)


def page_token(client: TestClient) -> str:
    match = re.search(r'data-csrf-token="([0-9]+\.[0-9a-f]{64})"', client.get("/review").text)
    assert match, "the page carries no CSRF token"
    return match.group(1)


def post(client: TestClient, body: dict, token: str | None, **headers: str):
    sent = {"Content-Type": "application/json", "Origin": ORIGIN, "Sec-Fetch-Site": "same-origin", **headers}
    if token is not None:
        sent["X-CSRF-Token"] = token
    return client.post("/review/decisions", content=json.dumps(body), headers=sent)


def queued(root) -> list[queue.QueueItem]:
    return sorted(queue.read_queue(root), key=lambda item: item.confidence)


def decision_files(root) -> list[str]:
    folder = decisions.decisions_dir(root)
    return sorted(str(p.relative_to(folder.path)) for p in Path(folder.path).rglob("*.json")) if folder.exists() else []


def test_the_page_lists_pending_items_least_confident_first_and_escaped(root, as_role) -> None:
    html = as_role("op").get("/review").text
    keys = re.findall(r'<code class="key">(.*?)</code>', html)
    assert keys == ["a.png", "b.png", "&lt;script&gt;alert(1)&lt;/script&gt;.png"]
    assert "<script>alert" not in html
    assert 'id="pending-count">3<' in html and "30.0% confident" in html and "runner-up" in html
    assert html.count('loading="lazy"') == 3
    assert f'src="review/images/{DAY}/{queued(root)[0].content_sha256}"' in html
    assert 'href="./"' in html  # the navigation back to Costs & quality
    assert 'id="read-only"' not in html and " disabled" not in html


def test_a_decision_is_one_post_and_the_same_one_again_writes_nothing(root, as_role) -> None:
    client = as_role("op")
    item = queued(root)[0]
    body = {"dt": DAY, "content_sha256": item.content_sha256, "label": "3"}
    first = post(client, body, page_token(client))
    assert first.status_code == 200, first.text
    assert first.json()["status"] == "recorded" and first.json()["decision"]["verdict"] == "correct"
    assert decision_files(root) == [f"{item.content_sha256}/000001.json"]
    newest = decisions.reviewed_labels(root)[item.content_sha256]
    assert (newest.label, newest.predicted, newest.reviewer, newest.source) == ("3", "7", "ana", "review")
    again = post(client, body, page_token(client))
    assert (again.status_code, again.json()) == (200, {"status": "unchanged"})
    assert decision_files(root) == [f"{item.content_sha256}/000001.json"]
    assert 'id="pending-count">2<' in client.get("/review").text
    shown_all = client.get("/review?show=all").text
    assert "reviewed: 3 (correct) by ana" in shown_all


def test_the_server_takes_the_model_label_and_key_from_the_queue_not_the_client(root, as_role) -> None:
    client = as_role("admin", "bo")
    item = queued(root)[1]
    body = {"dt": DAY, "content_sha256": item.content_sha256, "label": "7"}
    assert post(client, {**body, "key": "x"}, page_token(client)).status_code == 422  # no other field accepted
    assert post(client, body, page_token(client)).json()["decision"]["verdict"] == "confirm"
    decision = decisions.reviewed_labels(root)[item.content_sha256]
    assert (decision.key, decision.predicted, decision.reviewer) == ("b.png", "7", "bo")


@pytest.mark.parametrize(
    ("token", "headers", "reason"),
    [
        (None, {}, "missing or wrong X-CSRF-Token"),
        ("0" * 64, {}, "missing or wrong X-CSRF-Token"),
        ("page", {"Content-Type": "text/plain"}, "application/json"),
        ("page", {"Content-Type": "application/x-www-form-urlencoded"}, "application/json"),
        ("page", {"Sec-Fetch-Site": "cross-site"}, "cross-site"),
        ("page", {"Origin": "http://evil.example"}, "cross-origin"),
        ("page", {"Origin": "null"}, "cross-origin"),
    ],
)
def test_a_forged_decision_is_refused_and_writes_nothing(root, as_role, token, headers, reason) -> None:
    client = as_role("admin")
    body = {"dt": DAY, "content_sha256": queued(root)[0].content_sha256, "label": "3"}
    response = post(client, body, page_token(client) if token == "page" else token, **headers)
    assert response.status_code == 403 and reason in response.json()["detail"]
    assert decision_files(root) == []


def test_another_users_token_is_refused(root, as_role) -> None:
    body = {"dt": DAY, "content_sha256": queued(root)[0].content_sha256, "label": "3"}
    response = post(as_role("op", "mallory"), body, page_token(as_role("op", "ana")))
    assert response.status_code == 403 and decision_files(root) == []


def test_a_page_left_open_past_its_tokens_lifetime_is_told_to_reload(root, as_role, plugin) -> None:  # noqa: F811
    body = {"dt": DAY, "content_sha256": queued(root)[0].content_sha256, "label": "3"}
    client = as_role("op", "ana")
    issued, mac = page_token(client).split(".")
    yesterday = int(issued) - page.CSRF_TOKEN_TTL_S - 60
    stale = page.csrf_token(plugin.csrf_secret(), "ana", now=yesterday)  # what the page rendered a day ago held
    response = post(client, body, stale)
    assert response.status_code == 403 and "reload the Review page" in response.json()["detail"]
    assert "older than 12 h" in response.json()["detail"] and decision_files(root) == []
    assert post(client, body, f"{issued}.{mac}").status_code == 200  # the reloaded page's token works


def test_anonymous_is_401_and_a_viewer_may_look_but_not_decide(root, as_role) -> None:
    body = {"dt": DAY, "content_sha256": queued(root)[0].content_sha256, "label": "3"}
    anonymous = as_role(None)
    assert anonymous.get("/review").status_code == 401
    assert post(anonymous, body, "0" * 64).status_code == 401
    assert anonymous.get(f"/review/images/{DAY}/{body['content_sha256']}").status_code == 401
    viewer = as_role("viewer")
    html = viewer.get("/review").text
    assert 'data-csrf-token=""' in html and 'id="read-only"' in html  # a read-only page, its buttons disabled
    assert html.count("disabled data-action=") == html.count("data-action=") > 0
    assert post(viewer, body, page_token(as_role("op"))).status_code == 403  # even with a token
    assert post(as_role("user"), body, page_token(as_role("op"))).status_code == 403  # DAG access is not enough
    assert decision_files(root) == []


def test_an_unknown_item_is_404_and_a_label_outside_the_taxonomy_400(root, as_role) -> None:
    client = as_role("op")
    token = page_token(client)
    sha = queued(root)[0].content_sha256
    for dt, content_sha256 in [(DAY, "f" * 64), ("2026-11-06", sha), ("../../models", sha), (None, sha)]:
        response = post(client, {"dt": dt, "content_sha256": content_sha256, "label": "3"}, token)
        assert response.status_code == 404, (dt, content_sha256)
    refused = post(client, {"dt": DAY, "content_sha256": sha, "label": "Kitchen"}, token)
    assert refused.status_code == 400 and refused.json()["detail"] == "label 'Kitchen' is not in the digits taxonomy"
    assert decision_files(root) == []


def test_the_image_route_serves_the_queued_bytes_only(root, as_role) -> None:
    client = as_role("viewer")
    item = queued(root)[0]
    image = client.get(f"/review/images/{DAY}/{item.content_sha256}")
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert hashlib.sha256(image.content).hexdigest() == item.content_sha256
    assert "default-src 'none'" in image.headers["Content-Security-Policy"]
    assert client.get(f"/review/images/{DAY}/{'f' * 64}").status_code == 404
    assert client.get(f"/review/images/..%2F..%2Fmodels/{item.content_sha256}").status_code == 404


def test_the_page_script_is_served_and_nothing_else_from_static(root, as_role) -> None:
    client = as_role("viewer")
    script = client.get("/static/review.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    assert "innerHTML" not in script.text and "X-CSRF-Token" in script.text
    assert client.get("/static/costs_quality.js").status_code == 200
    assert client.get("/static/..%2Fcosts_quality.py").status_code == 404
    csp = script.headers["Content-Security-Policy"]
    assert "connect-src 'self'" in csp and "script-src 'self';" in csp
