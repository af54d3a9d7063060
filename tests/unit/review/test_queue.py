from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from tasks.common import storage
from tasks.review import queue
from tests.unit.review.conftest import row, sha

DT = "2026-11-05"


def day(n: int, dt: str = DT) -> list[dict]:
    """n ok rows with distinct confidences (row i: 0.01 + i/n), plus rows that are never queued."""
    rows = [row(f"img-{i:04d}.png", confidence=round(0.01 + i / n, 6)) for i in range(n)]
    return [*rows, row("broken.png", status="rejected"), row("odd.png", status="invalid")]


def test_a_day_queues_its_golden_sample_and_its_most_doubtful_other_rows(root) -> None:
    added = queue.enqueue_day(root, DT, day(200), budget=10, golden=5)
    reasons = [item.reason for item in added]
    assert reasons.count("golden_sample") == 5 and reasons.count("low_confidence") == 10
    doubtful = [item for item in added if item.reason == "low_confidence"]
    golden = {item.content_sha256 for item in added if item.reason == "golden_sample"}
    ranked = [r for r in sorted(day(200)[:200], key=lambda r: r["confidence"]) if r["content_sha256"] not in golden]
    assert [item.key for item in doubtful] == [r["key"] for r in ranked[:10]]
    assert all(item.dt == DT and item.model_version == "v1" and item.runner_up == "8" for item in added)
    assert queue.read_file(queue.day_file(root, DT)) == added
    assert {"broken.png", "odd.png"}.isdisjoint(item.key for item in added)


def test_the_golden_sample_is_seeded_by_the_day_not_by_row_order(root) -> None:
    rows = day(300)
    first = [r["key"] for _, r in queue.select(DT, rows, 0, 20)]
    assert [r["key"] for _, r in queue.select(DT, reversed(rows), 0, 20)] == first
    assert [r["key"] for _, r in queue.select("2026-11-06", rows, 0, 20)] != first


def test_a_doubtful_row_drawn_for_the_golden_sample_is_queued_once_as_golden() -> None:
    rows = [row(f"img-{i}.png", confidence=0.1) for i in range(3)]
    chosen = queue.select(DT, rows, budget=3, golden=3)
    assert [reason for reason, _ in chosen] == ["golden_sample"] * 3


def test_rows_without_a_confidence_can_be_golden_but_never_doubtful() -> None:
    rows = [row(f"img-{i}.png", confidence=None) for i in range(5)]
    assert {reason for reason, _ in queue.select(DT, rows, budget=5, golden=2)} == {"golden_sample"}


def test_a_rerun_queues_nothing_twice_and_only_tops_a_budget_up(root) -> None:
    first = queue.enqueue_day(root, DT, day(100), budget=10, golden=5, now=datetime(2026, 11, 6, tzinfo=UTC))
    assert queue.enqueue_day(root, DT, day(100), budget=10, golden=5) == []
    reclassified = [{**r, "confidence": 1 - (r["confidence"] or 0)} for r in day(100)]  # other rows now doubtful
    assert queue.enqueue_day(root, DT, reclassified, budget=10, golden=5) == []  # the day's budget is spent
    more = queue.enqueue_day(root, DT, reclassified, budget=12, golden=5)
    assert [item.reason for item in more] == ["low_confidence"] * 2
    items = queue.read_file(queue.day_file(root, DT))
    assert items[: len(first)] == first  # kept as queued, with their queued_at
    assert len({item.ident for item in items}) == len(items) == 17


def test_mislabel_flags_are_queued_once_with_the_label_they_doubt(root) -> None:
    flag = {
        "schema": "label_flag/1",
        "sha256": sha("raw/7/a.png"),
        "path": "digits/7/a.png",
        "given_label": "7",
        "suggested_label": "1",
        "suggested_probability": 0.93,
        "model_version": "digits-v3",
    }
    source = root / storage.MODELS / "digits-v3" / "label_flags.jsonl"
    source.parent.mkdir(parents=True)
    source.write_text(json.dumps(flag) + "\n")
    (item,) = queue.enqueue_flags(root, "digits-v3")
    assert (item.dt, item.key, item.reason, item.label, item.given_label) == (
        None,
        "digits/7/a.png",
        "mislabel_flag",
        "1",
        "7",
    )
    assert queue.enqueue_flags(root, "digits-v3") == []
    queue.enqueue_day(root, DT, day(10), budget=1, golden=1)
    assert [i.reason for i in queue.read_queue(root)] == ["golden_sample", "low_confidence", "mislabel_flag"]


@pytest.mark.parametrize("name", ["../x", "a/b", "..", ""])
def test_names_from_data_never_steer_a_queue_file(root, name: str) -> None:
    with pytest.raises(ValueError, match="cannot name a queue file"):
        queue.enqueue_day(root, name, [], budget=1, golden=1)
