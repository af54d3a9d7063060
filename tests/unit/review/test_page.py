"""The Review page's plain functions: review order, the queue lookup, the image read and its containment, and the
CSRF check of a decision POST."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from tasks.common.settings import load_settings
from tasks.review import decisions, page, queue
from tasks.review.queue import QueueItem
from tasks.training.mislabels import FLAG_SCHEMA, FLAGS_FILE
from tests.unit.review.conftest import sha

DAY = "2026-11-05"
PNG = b"\x89PNG\r\n\x1a\n" + b"pixels"


def item(key: str, confidence: float | None = 0.5, dt: str | None = DAY, content: bytes | None = None) -> QueueItem:
    content_sha = hashlib.sha256(content).hexdigest() if content is not None else sha(key)
    reason = "golden_sample" if dt else "mislabel_flag"
    return QueueItem(dt, key, content_sha, "v1", "3", confidence, "8", reason, "t", None if dt else "5")


def test_pending_items_come_least_confident_first_then_unranked_then_reviewed(root, digits) -> None:
    items = [item("a", 0.9), item("b", None), item("c", 0.2), item("d", 0.5)]
    decided = decisions.record(root, items[3], "3", reviewer="ana", taxonomy=digits)
    reviewed = decisions.reviewed_labels(root)
    assert [r.item.key for r in page.review_items(items, reviewed)] == ["c", "a", "b"]
    shown = page.review_items(items, reviewed, include_reviewed=True)
    assert [r.item.key for r in shown] == ["c", "a", "b", "d"] and shown[-1].decision == decided
    assert page.pending_count(items, reviewed) == 3


def test_links_and_second_choices_of_a_day_item_and_a_mislabel_flag() -> None:
    day, flag = page.ReviewItem(item("a/b c.png"), None), page.ReviewItem(item("raw/x.png", dt=None), None)
    assert day.image_link == f"review/images/{DAY}/{sha('a/b c.png')}" and day.second_choice == "8"
    assert flag.image_link == "" and flag.second_choice == "5"  # no incoming file; the dataset's given label


def test_an_item_is_found_by_day_and_hash_only_in_that_days_queue_file(root) -> None:
    rows = [{"key": "a.png", "content_sha256": sha("a.png"), "status": "ok", "label": "3", "confidence": 0.4}]
    (added,) = queue.enqueue_day(root, DAY, rows, budget=1, golden=0)
    assert page.find_item(root, DAY, sha("a.png")) == added
    assert page.find_item(root, "2026-11-06", sha("a.png")) is None
    assert page.find_item(root, DAY, sha("b.png")) is None
    assert page.find_item(root, None, sha("a.png")) is None  # not a mislabel flag
    for hostile in ("../../models", "dt=x/../..", ""):
        assert page.find_item(root, hostile, sha("a.png")) is None


@pytest.fixture
def settings(root):
    return load_settings({"PIPELINE_STORAGE_URI": f"file://{root.path}"})


def incoming(root, key: str, data: bytes = PNG) -> str:
    path = os.path.join(root.path, "incoming", f"dt={DAY}", key)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return path


def test_the_image_is_read_when_contained_and_its_bytes_match_the_queued_hash(root, settings) -> None:
    incoming(root, "sub/a.png")
    assert page.image_bytes(settings, item("sub/a.png", content=PNG)) == (PNG, "image/png")
    assert page.image_bytes(settings, item("sub/a.png", content=PNG + b"x")) is None  # another image's hash
    incoming(root, "note.txt", b"plain text")
    assert page.image_bytes(settings, item("note.txt", content=b"plain text")) is None  # not an image type
    assert page.image_bytes(settings, item("missing.png", content=PNG)) is None
    assert page.image_bytes(settings, item("raw/x.png", dt=None, content=PNG)) is None  # a flag: no incoming file


@pytest.mark.parametrize(
    "key", ["../x.png", "../../incoming/dt=2026-11-05/a.png", "/etc/passwd", "a//b.png", "./a.png"]
)
def test_a_queued_key_that_is_not_a_plain_relative_path_is_never_read(root, settings, key) -> None:
    outside = os.path.join(root.path, "x.png")
    with open(outside, "wb") as f:
        f.write(PNG)
    incoming(root, "a.png")
    assert page.image_bytes(settings, item(key, content=PNG)) is None


def test_a_symlink_is_never_followed(root, settings, tmp_path_factory) -> None:
    secret = tmp_path_factory.mktemp("outside") / "secret.png"
    secret.write_bytes(PNG)
    folder = os.path.dirname(incoming(root, "real.png"))
    os.symlink(secret, os.path.join(folder, "link.png"))
    os.symlink(secret.parent, os.path.join(folder, "linked-dir"))
    os.symlink(os.path.join(folder, "real.png"), os.path.join(folder, "inside-link.png"))  # even inside the root
    for key in ("link.png", "linked-dir/secret.png", "inside-link.png"):
        assert page.image_bytes(settings, item(key, content=PNG)) is None, key
    assert page.image_bytes(settings, item("real.png", content=PNG)) == (PNG, "image/png")


NOW = 1_800_000_000.0
TOKEN = page.csrf_token("server secret", "ana", now=NOW)
GOOD = {
    "content-type": "application/json",
    "x-csrf-token": TOKEN,
    "origin": "http://h:8080",
    "sec-fetch-site": "same-origin",
}


def refusal(now: float = NOW, **changes: str | None) -> str | None:
    headers = {k: v for k, v in {**GOOD, **changes}.items() if v is not None}
    return page.csrf_refusal(
        headers, secret="server secret", user_id="ana", host="h:8080", allowed_origins=["https://ui.example"], now=now
    )


def test_the_csrf_token_is_per_user_per_secret_and_per_issue_time() -> None:
    again, other_user, other_secret, later = (
        page.csrf_token(*args, now=now)
        for *args, now in [
            ("server secret", "ana", NOW),
            ("server secret", "bo", NOW),
            ("other secret", "ana", NOW),
            ("server secret", "ana", NOW + 1),
        ]
    )
    issued, mac = TOKEN.split(".")
    assert (issued, len(mac), again) == (str(int(NOW)), 64, TOKEN)
    assert len({TOKEN, other_user, other_secret, later}) == 4


def test_a_token_is_good_for_a_working_day_and_refused_after_it() -> None:
    ttl = page.CSRF_TOKEN_TTL_S
    assert refusal(now=NOW + ttl) is None and refusal(now=NOW - page.CSRF_CLOCK_SKEW_S) is None
    for now in (NOW + ttl + 1, NOW - page.CSRF_CLOCK_SKEW_S - 1):
        said = refusal(now=now)
        assert said is not None and "older than 12 h" in said and "reload the Review page" in said
    # The issue time is signed: moving it forward on an old token breaks the MAC.
    stale = page.csrf_token("server secret", "ana", now=NOW - ttl - 60)
    forged = f"{int(NOW)}.{stale.split('.')[1]}"
    assert "missing or wrong" in refusal(**{"x-csrf-token": forged})


@pytest.mark.parametrize("issued", ["１８", " 1800000000", "1_800_000_000", "-5", "+1800000000", "1800000000 ", ""])
def test_only_the_servers_own_issue_time_form_is_read_even_under_a_valid_mac(issued: str) -> None:
    """Defence in depth: int() would read each of these; only ASCII digits, as csrf_token writes them, are."""
    token = f"{issued}.{page._csrf_mac('server secret', 'ana', issued)}"
    said = refusal(**{"x-csrf-token": token})
    assert said is not None and "missing or wrong X-CSRF-Token" in said


def test_a_request_from_the_page_passes_and_a_non_browser_client_needs_only_json_and_the_token() -> None:
    assert refusal() is None
    assert refusal(**{"content-type": "application/json; charset=utf-8"}) is None
    assert refusal(origin=None, **{"sec-fetch-site": None}) is None  # httpx, curl: no browser headers
    assert refusal(origin="https://ui.example/") is None  # the configured base URL, behind a proxy


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"x-csrf-token": None}, "missing or wrong X-CSRF-Token"),
        ({"x-csrf-token": page.csrf_token("server secret", "bo", now=NOW)}, "missing or wrong X-CSRF-Token"),
        ({"x-csrf-token": page.csrf_token("other secret", "ana", now=NOW)}, "missing or wrong X-CSRF-Token"),
        ({"x-csrf-token": ""}, "missing or wrong X-CSRF-Token"),
        ({"x-csrf-token": TOKEN.split(".")[1]}, "missing or wrong X-CSRF-Token"),  # the MAC without its issue time
        ({"content-type": None}, "application/json"),
        ({"content-type": "text/plain;charset=UTF-8"}, "application/json"),
        ({"content-type": "multipart/form-data; boundary=x"}, "application/json"),
        ({"sec-fetch-site": "cross-site"}, "cross-site"),
        ({"sec-fetch-site": "same-site"}, "cross-site"),
        ({"origin": "http://evil.example"}, "cross-origin"),
        ({"origin": "http://h:8081"}, "cross-origin"),
        ({"origin": "null"}, "cross-origin"),
    ],
)
def test_a_forged_request_is_refused_with_a_one_line_reason(changes: dict, reason: str) -> None:
    said = refusal(**changes)
    assert said is not None and reason in said and "\n" not in said


def test_a_mislabel_flag_is_found_in_the_flag_files(root) -> None:
    flag = {"schema": FLAG_SCHEMA, "sha256": sha("x"), "path": "3/x.png", "given_label": "3", "suggested_label": "8"}
    (root / "models" / "v1").mkdir(parents=True)
    (root / "models" / "v1" / FLAGS_FILE).write_text(json.dumps({**flag, "suggested_probability": 0.9}) + "\n")
    (queued,) = queue.enqueue_flags(root, "v1")
    assert page.find_item(root, None, sha("x")) == queued
    assert page.find_item(root, DAY, sha("x")) is None and page.find_item(root, None, sha("y")) is None
