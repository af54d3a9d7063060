"""Classification in the cost ledger: busy and idle endpoint time, the budget guard, the daily report."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tasks.common.storage import storage_path
from tasks.costs import budget, ledger
from tasks.costs.budget import BudgetExceeded
from tasks.costs.daily_report import daily_costs, write_report
from tasks.costs.ledger import LedgerEntry, classification_entry, partition_entries, uptime_seconds
from tasks.costs.pricing import EndpointPricing

SAGEMAKER = EndpointPricing(backend="sagemaker", region="us-east-1", instance_type="ml.g5.xlarge", instance_count=2)
STATS = {
    "rows": 1000,
    "statuses": {"ok": 950, "invalid": 20, "rejected": 10, "failed": 20},
    "labels": {},
    "prompt_tokens": 2_300_000,
    "completion_tokens": 10_000,
}


def entries(dt: str, busy: float, deployed_at: str = "2026-10-01T00:00:00+00:00", **kwargs) -> list[LedgerEntry]:
    row = classification_entry(
        dt, SAGEMAKER, endpoint="llava", model_version="v1", stats=STATS, busy_seconds=busy, run_id="r", dag_id="d"
    )
    return partition_entries(row, deployed_at=deployed_at, **kwargs)


def test_a_partition_costs_its_busy_time_and_the_endpoint_day_its_idle_rest() -> None:
    busy, idle = entries("2026-11-02", 674.0, now=datetime(2026, 11, 5, tzinfo=UTC))
    assert (busy.kind, busy.key, busy.day, idle.kind, idle.key) == (
        "classification",
        "2026-11-02",
        "2026-11-02",
        "endpoint_idle",
        "llava/2026-11-02",
    )
    assert busy.cost_usd == pytest.approx(674 / 3600 * 1.408 * 2)
    assert busy.usd_per_1000_images == pytest.approx(busy.cost_usd)  # 1000 images
    assert (busy.images_ok, busy.images_failed, busy.prompt_tokens) == (950, 20, 2_300_000)
    assert busy.billable_seconds + idle.billable_seconds == 24 * 3600  # the whole endpoint-day is billed once
    assert busy.cost_usd + idle.cost_usd == pytest.approx(24 * 1.408 * 2)


def test_idle_time_counts_only_while_the_endpoint_was_up() -> None:
    now = datetime(2026, 11, 2, 18, tzinfo=UTC)
    assert uptime_seconds("2026-11-02", "2026-11-02T06:00:00+00:00", now) == 12 * 3600
    assert uptime_seconds("2026-11-01", "2026-11-02T06:00:00+00:00", now) == 0  # backfilled day before deploy
    assert entries("2026-11-01", 100.0, "2026-11-02T06:00:00+00:00", now=now)[1].billable_seconds == 0


def costs_root(tmp_path: Path):
    return storage_path(f"file://{tmp_path}/costs")


def test_the_budget_guard_uses_measured_throughput_and_refuses_above_budget(tmp_path: Path) -> None:
    root = costs_root(tmp_path)
    assert budget.measured_images_per_second(root, "ml.g5.xlarge", 2) is None  # nothing measured yet
    for entry in entries("2026-11-02", 495.0):  # 990 images answered or failed in 495 s: 2 images/s
        ledger.record(root, entry)
    assert budget.measured_images_per_second(root, "ml.g5.xlarge", 2) == pytest.approx(2.0)
    assert budget.measured_images_per_second(root, "ml.g5.xlarge", 1) is None  # another endpoint shape

    estimate = budget.check_budget(7200, 2.0, SAGEMAKER, budget_usd=3.0, what="dt=2026-11-03")
    assert estimate["seconds"] == 3600 and estimate["usd"] == pytest.approx(2 * 1.408)
    with pytest.raises(BudgetExceeded, match=r"dt=2026-11-03: estimated \$2.8160 for 7,200 images .* \$1.0000"):
        budget.check_budget(7200, 2.0, SAGEMAKER, budget_usd=1.0, what="dt=2026-11-03")


def test_the_daily_report_splits_spend_by_kind_and_writes_a_table_and_a_chart(tmp_path: Path) -> None:
    root = costs_root(tmp_path)
    for entry in entries("2026-11-02", 674.0, now=datetime(2026, 11, 5, tzinfo=UTC)):
        ledger.record(root, entry)
    training = LedgerEntry(
        kind="training",
        key="job-1",
        backend="sagemaker",
        region="us-east-1",
        instance_type="ml.g5.2xlarge",
        instance_count=1,
        billable_seconds=3600,
        price_per_hour_usd=1.515,
        recorded_at="2026-11-02T09:00:00+00:00",
    )
    ledger.record(root, training)

    [day] = daily_costs(root, "2026-11-03")
    assert day.day == "2026-11-02" and day.images == 1000
    assert day.training_usd == pytest.approx(1.515)
    assert day.classification_usd + day.idle_usd == pytest.approx(24 * 1.408 * 2)
    assert day.usd_per_1000_images == pytest.approx(day.classification_usd)
    assert daily_costs(root, "2026-11-01") == []

    paths = write_report(root, "2026-11-03")
    [row] = list(csv.DictReader(io.StringIO(storage_path(paths["csv"]).read_text())))
    assert float(row["total_usd"]) == pytest.approx(day.total_usd)
    assert "| 2026-11-02 |" in storage_path(paths["markdown"]).read_text()
    assert storage_path(paths["png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
