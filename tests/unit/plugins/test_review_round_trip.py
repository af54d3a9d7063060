"""Label Studio and the Review page are two doors to the same decisions: the same answers given on the page (through
its HTTP layer) and in Label Studio (export, the JSON edited as a reviewer would, import) record the same labels,
verdicts and items; only where and by whom differ."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime

from tasks.common.storage import storage_path
from tasks.model.taxonomy import load_taxonomy
from tasks.review import decisions, label_studio, queue
from tests.unit.plugins.test_costs_quality import plugin  # noqa: F401 — the plugin module, loaded as Airflow does
from tests.unit.plugins.test_review_page import DAY, as_role, page_token, post, queued, root  # noqa: F401 — fixtures

SAME = ("content_sha256", "label", "verdict", "predicted", "dt", "key", "reason", "model_version")


def test_label_studio_round_trip_equals_the_review_pages_decisions(root, as_role, tmp_path_factory) -> None:  # noqa: F811
    twin = storage_path((tmp_path_factory.mktemp("label-studio") / "root").as_uri())
    shutil.copytree(root.path, twin.path)  # the same queue and images, before anyone decided
    items = queued(root)
    answers = {items[0].content_sha256: "3", items[1].content_sha256: "4", items[2].content_sha256: items[2].label}

    client = as_role("op")  # two corrections and a confirm on the page
    for sha, label in answers.items():
        assert post(client, {"dt": DAY, "content_sha256": sha, "label": label}, page_token(client)).status_code == 200

    exported = label_studio.export_tasks(queue.read_queue(twin), twin.as_uri())
    for task in exported:  # what a reviewer's Label Studio export looks like once they answered each task
        task["annotations"] = [
            label_studio.annotation(answers[task["data"]["content_sha256"]], 17, datetime(2026, 11, 9, tzinfo=UTC))
        ]
    done = label_studio.import_annotations(twin, exported, queue.read_queue(twin), load_taxonomy("digits"))
    assert (len(done.recorded), done.unchanged, done.skipped) == (3, 0, [])

    on_page, in_studio = decisions.reviewed_labels(root), decisions.reviewed_labels(twin)
    assert on_page.keys() == in_studio.keys() == answers.keys()
    for sha in answers:
        assert [getattr(on_page[sha], f) for f in SAME] == [getattr(in_studio[sha], f) for f in SAME]
    assert sorted(d.verdict for d in on_page.values()) == ["confirm", "correct", "correct"]
    assert {(d.source, d.reviewer) for d in on_page.values()} == {("review", "ana")}
    assert {(d.source, d.reviewer) for d in in_studio.values()} == {("label_studio", "label-studio:17")}
    again = label_studio.import_annotations(twin, exported, queue.read_queue(twin), load_taxonomy("digits"))
    assert (again.recorded, again.unchanged) == ([], 3)  # a second import of the same export writes nothing
