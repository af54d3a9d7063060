from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest

from tasks.review import decisions
from tasks.review.queue import QueueItem
from tests.unit.review.conftest import sha


def item(key: str = "img-1.png", label: str | None = "3", reason: str = "golden_sample") -> QueueItem:
    return QueueItem("2026-11-05", key, sha(key), "v1", label, 0.4, "8", reason, "2026-11-06T00:00:00+00:00")


def files(root) -> list[str]:
    return sorted(p.name for p in (decisions.decisions_dir(root) / sha("img-1.png")).iterdir() if p.suffix == ".json")


def test_a_confirm_and_a_correction_are_recorded_with_who_and_when(root, digits) -> None:
    when = datetime(2026, 11, 7, 9, 30, tzinfo=UTC)
    confirmed = decisions.record(root, item(), "3", reviewer="ana", taxonomy=digits, now=when)
    assert (confirmed.verdict, confirmed.label, confirmed.reviewer) == ("confirm", "3", "ana")
    assert confirmed.decided_at == "2026-11-07T09:30:00+00:00" and confirmed.source == "review"
    corrected = decisions.record(root, item("img-2.png"), " 5 ", reviewer="bo", taxonomy=digits)
    assert (corrected.verdict, corrected.label, corrected.predicted) == ("correct", "5", "3")
    assert decisions.reviewed_labels(root) == {sha("img-1.png"): confirmed, sha("img-2.png"): corrected}


def test_the_same_decision_twice_is_one_record_and_a_different_one_supersedes(root, digits) -> None:
    assert decisions.record(root, item(), "3", reviewer="ana", taxonomy=digits)
    assert decisions.record(root, item(), "3", reviewer="ana", taxonomy=digits) is None
    assert files(root) == ["000001.json"]
    decisions.record(root, item(), "8", reviewer="bo", taxonomy=digits)
    decisions.record(root, item(), "3", reviewer="ana", taxonomy=digits)  # back again: a third record
    assert files(root) == ["000001.json", "000002.json", "000003.json"]  # append-only: nothing rewritten
    newest = decisions.reviewed_labels(root)[sha("img-1.png")]
    assert (newest.label, newest.reviewer, newest.verdict) == ("3", "ana", "confirm")


def test_reviewers_deciding_at_once_all_land_in_order(root, digits) -> None:
    labels = [str(n) for n in range(10)]
    threads = [
        threading.Thread(
            target=decisions.record, args=(root, item(), label), kwargs={"reviewer": label, "taxonomy": digits}
        )
        for label in labels
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert files(root) == [f"{n:06d}.json" for n in range(1, 11)]


def test_labels_outside_the_taxonomy_and_hostile_strings_are_refused_or_kept_as_data(root, digits) -> None:
    with pytest.raises(ValueError, match="not in the digits taxonomy"):
        decisions.record(root, item(), "<script>alert(1)</script>", reviewer="ana", taxonomy=digits)
    with pytest.raises(ValueError, match="reviewer"):
        decisions.record(root, item(), "3", reviewer="  ", taxonomy=digits)
    hostile = QueueItem("2026-11-05", "x", "../../etc", "v1", "3", None, None, "golden_sample", "t")
    with pytest.raises(ValueError, match="not a lowercase hex SHA-256"):
        decisions.record(root, hostile, "3", reviewer="ana", taxonomy=digits)
    odd = decisions.record(root, item(key='<img src=x onerror="1">'), "3", reviewer="<b>eve</b>", taxonomy=digits)
    assert decisions.reviewed_labels(root)[odd.content_sha256].reviewer == "<b>eve</b>"
