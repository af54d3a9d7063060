from __future__ import annotations

import copy
import json
import xml.etree.ElementTree as ET
from pathlib import Path

from tasks.common.storage import storage_path
from tasks.model.taxonomy import load_taxonomy
from tasks.review import decisions, label_studio, queue
from tests.unit.review.conftest import row

DT = "2026-11-05"


def queued(root) -> list[queue.QueueItem]:
    rows = [row(f"img-{i}.png", label=str(i % 10), confidence=0.2 + i / 100) for i in range(30)]
    return queue.enqueue_day(root, DT, rows, budget=2, golden=2)


def annotate(task: dict, choice: str | None, by: int = 7, when: str = "2026-11-08T10:00:00.000000Z") -> None:
    """What a reviewer's save in Label Studio leaves in its JSON export: `choice` None accepts the prediction."""
    result = copy.deepcopy(task["predictions"][0]["result"])
    if choice is not None:
        result[0]["value"]["choices"] = [choice]
    task["annotations"] = [{"id": 1, "completed_by": by, "result": result, "was_cancelled": False, "updated_at": when}]


def test_export_carries_the_models_answer_as_a_scored_prediction(root) -> None:
    items = queued(root)
    tasks = label_studio.export_tasks(items, "s3://bucket/prefix")
    first, item = tasks[0], items[0]
    assert first["data"]["image"] == f"s3://bucket/prefix/incoming/dt={DT}/{item.key}"
    assert first["predictions"] == [
        {
            "model_version": "v1",
            "score": item.confidence,
            "result": [
                {"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [item.label]}}
            ],
        }
    ]


def test_the_round_trip_records_what_a_reviewer_on_the_page_would(root, digits, tmp_path: Path) -> None:
    items = queued(root)
    tasks = json.loads(json.dumps(label_studio.export_tasks(items, "file:///data")))
    annotate(tasks[0], "9" if items[0].label != "9" else "8")
    annotate(tasks[1], "0" if items[1].label != "0" else "1")
    annotate(tasks[2], None)  # accepted as predicted
    done = label_studio.import_annotations(root, tasks, items, digits)
    assert len(done.recorded) == 3 and done.skipped == [] and done.unchanged == 0
    assert [d.verdict for d in done.recorded] == ["correct", "correct", "confirm"]
    assert {d.reviewer for d in done.recorded} == {"label-studio:7"}
    assert done.recorded[0].decided_at == "2026-11-08T10:00:00+00:00" and done.recorded[0].source == "label_studio"

    page = storage_path(f"file://{tmp_path}/page")  # the same answers given on the Review page
    for task, item in zip(tasks[:3], items, strict=False):
        choice = task["annotations"][0]["result"][0]["value"]["choices"][0]
        decisions.record(page, item, choice, reviewer="ana", taxonomy=digits)

    def outcome(where) -> dict:
        return {sha: (d.label, d.verdict, d.predicted) for sha, d in decisions.reviewed_labels(where).items()}

    assert outcome(root) == outcome(page) and len(outcome(root)) == 3
    assert label_studio.import_annotations(root, tasks, items, digits).unchanged == 3  # importing again: no write


def test_import_skips_what_it_cannot_trust_and_says_why(root, digits) -> None:
    items = queued(root)
    tasks = label_studio.export_tasks(items, "file:///data")
    annotate(tasks[0], "not-a-digit")
    annotate(tasks[1], "3")
    tasks[1]["data"]["content_sha256"] = "f" * 64  # an item that was never queued
    annotate(tasks[2], "3")
    tasks[2]["annotations"][0]["was_cancelled"] = True
    annotate(tasks[3], "3")
    tasks[3]["annotations"][0]["result"][0]["value"]["choices"] = ["3", "4"]
    done = label_studio.import_annotations(root, [*tasks, "junk"], items, digits)
    assert done.recorded == [] and decisions.reviewed_labels(root) == {}
    assert done.skipped == [
        "task 0: label 'not-a-digit' is not in the digits taxonomy",
        "task 1: not a queued item",
        "task 3: no single choice",
    ]


def test_the_labeling_config_offers_every_label_of_the_taxonomy() -> None:
    hotel = load_taxonomy("hotel")
    config = ET.fromstring(label_studio.labeling_config(hotel))
    choices = config.find("Choices")
    assert (choices.get("name"), choices.get("toName")) == (label_studio.FROM_NAME, label_studio.TO_NAME)
    assert tuple(c.get("value") for c in choices) == hotel.labels
