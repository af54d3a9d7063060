"""Which dt a run processes, the streamed listing, the manifest and its shards."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from tasks.common.storage import storage_path
from tasks.nightly import partitions
from tasks.nightly.partitions import NightlySchedule, iter_files, partition_dt, plan_partition, read_shard


def test_a_run_processes_the_day_of_its_logical_date() -> None:
    d = datetime(2026, 11, 2, tzinfo=UTC)
    assert partition_dt(d, d) == "2026-11-02"  # scheduled and backfill runs: logical date == interval start
    assert partition_dt(d, datetime(2026, 11, 1, tzinfo=UTC)) == "2026-11-02"  # `dags test … 2026-11-02`
    assert partition_dt(None, datetime(2026, 11, 1, tzinfo=UTC)) == "2026-11-01"  # manual run without a date
    after = datetime(2026, 11, 3, tzinfo=UTC)  # scheduled and backfill runs: run_after is the interval's end
    assert partition_dt(d, d, after) == "2026-11-02"


def test_a_form_trigger_with_its_default_logical_date_processes_the_last_complete_day() -> None:
    """Issue 24: the trigger form pre-fills the logical date with now; that day is not over, yesterday is."""
    now = datetime(2026, 12, 2, 14, 5, tzinfo=UTC)
    assert partition_dt(now, datetime(2026, 12, 1, tzinfo=UTC), run_after=now) == "2026-12-01"
    past = datetime(2026, 11, 25, tzinfo=UTC)  # a day picked in the form: that day
    assert partition_dt(past, datetime(2026, 11, 24, tzinfo=UTC), run_after=now) == "2026-11-25"
    future = datetime(2026, 12, 5, tzinfo=UTC)  # the future keeps its dt (the sensor refuses it, saying why)
    assert partition_dt(future, future, run_after=now) == "2026-12-05"


def test_schedule_comes_from_the_environment() -> None:
    assert NightlySchedule.from_env({}).cron == "0 0 * * *"
    schedule = NightlySchedule.from_env(
        {"PIPELINE_CLASSIFY_CRON": "30 1 * * *", "PIPELINE_CLASSIFY_START_DATE": "2026-01-05"}
    )
    assert (schedule.cron, schedule.start_date.isoformat()) == ("30 1 * * *", "2026-01-05")


def write_files(root: Path, names: list[str]) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(name.encode())


def test_listing_streams_nested_files_and_counts_ignored_ones(tmp_path: Path) -> None:
    write_files(tmp_path / "in", ["b.png", "a/c.png", "a/d/e.jpg", ".DS_Store", "__MACOSX/a/._c.png"])
    listed = {key: size for key, size, *_ in iter_files(storage_path((tmp_path / "in").as_uri()))}
    assert listed == {"b.png": 5, "a/c.png": 7, "a/d/e.jpg": 9, ".DS_Store": 9, "__MACOSX/a/._c.png": 18}
    assert list(iter_files(storage_path((tmp_path / "missing").as_uri()))) == []


def plan(tmp_path: Path, n: int, shard_size: int) -> partitions.PartitionPlan:
    write_files(tmp_path / "in", [f"img-{i:03d}.png" for i in reversed(range(n))] + [".DS_Store"])
    return plan_partition(
        storage_path((tmp_path / "in").as_uri()),
        storage_path((tmp_path / "out" / "dt=2026-11-02").as_uri()),
        dt="2026-11-02",
        model_version="v1",
        shard_size=shard_size,
    )


def test_shards_cover_the_sorted_manifest_exactly_once(tmp_path: Path) -> None:
    planned = plan(tmp_path, 23, shard_size=5)
    assert (planned.listed, planned.ignored, planned.images, planned.to_classify) == (24, 1, 23, 23)
    assert [(s.offset, s.count) for s in planned.shards] == [(0, 5), (5, 5), (10, 5), (15, 5), (20, 3)]
    keys = [key for shard in planned.shards for key, *_ in read_shard(shard)]
    assert keys == [f"img-{i:03d}.png" for i in range(23)]
    manifest = Path(storage_path(planned.shards[0].manifest_uri).path)
    assert manifest.parent.parent.name == f"run={planned.run_token}"


def test_a_huge_partition_gets_bigger_shards_not_more(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(partitions, "MAX_SHARDS", 4)
    planned = plan(tmp_path, 30, shard_size=2)
    assert [s.count for s in planned.shards] == [8, 8, 8, 6]


def test_an_empty_or_missing_partition_plans_zero_shards(tmp_path: Path) -> None:
    planned = plan_partition(
        storage_path((tmp_path / "nothing").as_uri()),
        storage_path((tmp_path / "out").as_uri()),
        dt="2026-11-02",
        model_version="",
        shard_size=10,
    )
    assert (planned.listed, planned.to_classify, planned.shards) == (0, 0, [])


def test_a_run_before_the_start_date_says_that_nothing_ran_in_its_note_and_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 9, defect 9 / issue 24: a run for D before the start date has no tasks; it must not stay green.
    Airflow's callback context for a run without task instances has no `dag_run` (airflow.models.dagrun)."""
    from types import SimpleNamespace

    from tasks.common import run_notes

    written = []
    monkeypatch.setattr(run_notes, "logical_date", lambda dag_id, run_id: "2026-10-25T00:00:00+00:00")
    monkeypatch.setattr(run_notes, "write_note", lambda *args, **kwargs: written.append((args, kwargs)))
    monkeypatch.setenv("PIPELINE_CLASSIFY_START_DATE", "2026-11-01")
    empty = {"dag": SimpleNamespace(dag_id="classify_images"), "run_id": "manual__x", "reason": "success"}
    message = partitions.say_when_nothing_ran(empty)
    assert "NOTHING RAN in manual__x: dt=2026-10-25" in message and "START_DATE=2026-11-01" in message
    assert "backfill create --dag-id classify_images --from-date 2026-10-25 --to-date 2026-10-25" in message
    assert written == [(("classify_images", "manual__x", message), {"state": "failed"})]
    assert partitions.say_when_nothing_ran(empty | {"dag_run": SimpleNamespace()}) is None
    assert len(written) == 1
