"""classify_images' steps write the run note: a day the quality gate refuses says so before the task fails."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from airflow.sdk.exceptions import AirflowFailException

from tasks.common import run_notes
from tasks.nightly import commit, steps
from tasks.nightly.partitions import PartitionPlan

PLAN = PartitionPlan(dt="2026-12-01", run_token="t", listed=10, ignored=0, carried=0, to_classify=10, shards=[])
STATS = {"rows": 10, "statuses": {"ok": 5, "invalid": 5, "rejected": 0, "failed": 0}}


def test_a_refused_day_gets_a_note_saying_it_was_not_published(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AirflowFailException("quality gate failed for dt=2026-12-01")

    written = []
    monkeypatch.setattr(commit, "gate", refuse)
    monkeypatch.setattr(run_notes, "write_note", lambda dag_id, run_id, note: written.append((dag_id, run_id, note)))
    monkeypatch.setattr(steps.PartitionJob, "from_dict", lambda doc: SimpleNamespace(model_version="v1"))
    planned = {"plan": PLAN.to_dict(), "job": {}}
    staged = {"files": [], "stats": STATS, "busy_seconds": 1.0, "classified": 10}
    ti = SimpleNamespace(dag_id="classify_images", run_id="scheduled__2026-12-01")
    with pytest.raises(AirflowFailException):
        steps.quality_gate(None, planned, staged, {}, ti)
    ((dag_id, run_id, note),) = written
    assert (dag_id, run_id) == ("classify_images", "scheduled__2026-12-01")
    assert note.startswith("**dt=2026-12-01 · 10 images · quality violated: NOT published · not priced**")
    assert "- statuses: ok 5, invalid 5, rejected 0, failed 0" in note
