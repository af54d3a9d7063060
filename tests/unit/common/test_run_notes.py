"""The run note and the asset event's extra say what a classify run did: dt, images, statuses, verdict, $, model."""

from __future__ import annotations

import httpx
import pytest

from tasks.common import run_notes
from tasks.common.run_notes import DayOutcome, quality_verdict

DAY = DayOutcome(
    dt="2026-12-01",
    images=120,
    classified=100,
    carried=20,
    statuses={"ok": 117, "invalid": 2, "rejected": 1, "failed": 0},
    quality="passed",
    model_version="v-2026-12-01",
    cost_usd=0.0006,
    usd_per_1000_images=0.005,
    estimated_accuracy=0.9712,
)


def test_the_note_leads_with_dt_images_verdict_and_cost_and_lists_every_field() -> None:
    note = DAY.note()
    assert note.splitlines()[0] == "**dt=2026-12-01 · 120 images · quality passed · $0.0006**"
    assert "- images: 120 listed, 100 classified, 20 carried over" in note
    assert "- statuses: ok 117, invalid 2, rejected 1, failed 0" in note
    assert "- cost: $0.0006 ($0.0050/1000 images)" in note and "- model: `v-2026-12-01`" in note


def test_the_extra_is_flat_with_the_same_fields() -> None:
    assert DAY.extra() == {
        "dt": "2026-12-01",
        "images": 120,
        "classified": 100,
        "carried": 20,
        "quality": "passed",
        "model_version": "v-2026-12-01",
        "cost_usd": 0.0006,
        "usd_per_1000_images": 0.005,
        "estimated_accuracy": 0.9712,
        "ok": 117,
        "invalid": 2,
        "rejected": 1,
        "failed": 0,
    }
    assert all(not isinstance(value, dict | list) for value in DAY.extra().values())


def test_the_note_gives_the_label_free_estimate_beside_the_verdict() -> None:
    assert "- quality gate: passed (estimated accuracy 97.1%, from calibrated confidence)" in DAY.note().splitlines()
    unknown = DayOutcome("2026-11-27", 5, 5, 0, {"ok": 5}, "passed", "v", None, None)
    assert "- quality gate: passed" in unknown.note().splitlines()  # no confidence: no estimate, no "None"


def test_a_zero_image_day_says_so_first_and_is_never_passed() -> None:
    empty = DayOutcome("2026-11-27", 0, 0, 0, {}, quality_verdict({"passed": True}, rows=0), "", None, None)
    assert empty.note().splitlines()[0] == "**dt=2026-11-27 · NO IMAGES: nothing classified (quality no data)**"
    assert "- cost: not priced" in empty.note()


@pytest.mark.parametrize(
    ("verdict", "rows", "expected"),
    [
        ({"verdict": "no data", "passed": True}, 0, "no data"),  # the gate's own word wins
        ({"verdict": "violated", "passed": False}, 10, "violated"),
        ({"passed": True}, 0, "no data"),  # a manifest from before `verdict`: zero rows are no data
        ({"passed": True}, 5, "passed"),
        ({"passed": False}, 5, "violated"),
    ],
)
def test_the_verdict_reads_the_gates_word_and_falls_back_for_old_manifests(verdict, rows, expected) -> None:
    assert quality_verdict(verdict, rows) == expected


def test_a_backlog_note_has_the_range_totals_and_a_line_per_day_and_names_the_days_not_committed() -> None:
    other = DayOutcome("2026-11-29", 0, 0, 0, {}, "no data", "v-2026-12-01", 0.0, None)
    note = run_notes.range_note(["2026-11-29", "2026-11-30", "2026-12-01"], [DAY.extra(), other.extra()])
    lines = note.splitlines()
    assert lines[0] == "**dt=2026-11-29..2026-12-01 · 2 of 3 days committed · 120 images · $0.0006**"
    assert "- NOT committed: 2026-11-30" in lines and "- model: `v-2026-12-01`" in lines
    assert "- dt=2026-12-01: 120 images (ok 117, invalid 2, rejected 1, failed 0), quality passed, $0.0006" in lines
    assert "- dt=2026-11-29: 0 images (ok 0, invalid 0, rejected 0, failed 0), quality no data, $0.0000" in lines


def test_a_long_backlog_note_stays_under_the_apis_limit() -> None:
    days = [f"2026-01-{d:02d}" for d in range(1, 32)]
    note = run_notes.range_note(days, [{**DAY.extra(), "dt": d} for d in days])
    assert len(note) <= run_notes.MAX_NOTE_CHARS and note.endswith("(each day's fields: its asset event)")


def test_write_note_patches_the_run_through_the_rest_api(monkeypatch: pytest.MonkeyPatch) -> None:
    """The public REST API's PATCH dagRuns/{run_id} with update_mask: what a task can use to set a note."""
    seen = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, request.url.path, request.url.params.get_list("update_mask"), request.content))
        return httpx.Response(200, json={})

    client = httpx.Client(base_url="http://api/api/v2", transport=httpx.MockTransport(answer))
    monkeypatch.setattr(run_notes, "_api_client", lambda: client)
    assert run_notes.write_note("classify_images", "manual__x", "note", state="failed")
    method, path, mask, body = seen[0]
    assert (method, path, mask) == ("PATCH", "/api/v2/dags/classify_images/dagRuns/manual__x", ["note", "state"])
    assert b'"note":"note"' in body and b'"state":"failed"' in body


def test_a_note_that_cannot_be_written_is_logged_and_never_fails(monkeypatch, caplog) -> None:
    def refuse() -> httpx.Client:
        raise httpx.ConnectError("connection refused")

    monkeypatch.setattr(run_notes, "_api_client", refuse)
    assert run_notes.write_note("classify_images", "manual__x", "dt=2026-12-01 · 3 images") is False
    assert "run note of manual__x not written (ConnectError" in caplog.text and "3 images" in caplog.text
