"""The numbers behind the "Costs & quality" view, from a ledger and a registry written by the project's own writers."""

from __future__ import annotations

from pathlib import Path

import pytest
from airflow.sdk import ObjectStoragePath

from tasks.common.storage import storage_path
from tasks.costs import view_data
from tasks.costs.ledger import LedgerEntry, record
from tasks.training.registry import promote_if_better, register_version


def classification(dt: str, images: int, invalid: int, seconds: float) -> LedgerEntry:
    return LedgerEntry(
        kind="classification", key=dt, backend="sagemaker", region="us-east-1", instance_type="ml.g5.xlarge",
        instance_count=1, billable_seconds=seconds, price_per_hour_usd=1.408, model_version="v2", images=images,
        images_ok=images - invalid - 1, images_invalid=invalid, images_rejected=1,
    )  # fmt: skip


@pytest.fixture
def storage_root(tmp_path: Path) -> ObjectStoragePath:
    """Two nights, one training job, an idle endpoint day, and a promoted model."""
    root = storage_path(tmp_path.as_uri())
    for entry in (
        classification("2026-11-01", images=2000, invalid=40, seconds=1348),
        classification("2026-11-02", images=1000, invalid=5, seconds=674),
        LedgerEntry(kind="training", key="ft-v2", backend="sagemaker", region="us-east-1",
                    instance_type="ml.g5.12xlarge", instance_count=2, billable_seconds=5400, price_per_hour_usd=7.09,
                    model_version="v2", spot=True),
        LedgerEntry(kind="endpoint_idle", key="ep/2026-11-02", backend="sagemaker", region="us-east-1",
                    instance_type="ml.g5.xlarge", instance_count=1, billable_seconds=3600, price_per_hour_usd=1.408),
    ):  # fmt: skip
        record(root / "costs", entry)
    metrics = {"accuracy": 0.9721, "invalid_rate": 0.0028}
    register_version(
        root / "models", "v2", {"model_uri": "s3://m/v2", "taxonomy": "hotel", "prompt": "p", "metrics": metrics}
    )
    promote_if_better(root / "models", "v2", min_accuracy=0.9, tolerance=0.01)
    return root


def test_the_report_reads_partitions_training_spend_and_the_production_model(storage_root: ObjectStoragePath) -> None:
    report = view_data.build_report(storage_root)

    newest, oldest = report.partitions
    assert (newest.dt, newest.images, newest.images_invalid) == ("2026-11-02", 1000, 5)
    assert newest.invalid_rate == pytest.approx(0.005) and oldest.invalid_rate == pytest.approx(0.02)
    assert newest.usd_per_1000_images == pytest.approx(674 / 3600 * 1.408)  # the seed's ≈ $0.26 per 1000

    (job,) = report.training
    assert (job.job, job.instance, job.hours) == ("ft-v2", "2 × ml.g5.12xlarge (spot)", 1.5)
    assert job.cost_usd == pytest.approx(1.5 * 7.09 * 2)

    assert set(report.spend_by_kind) == {"classification", "training", "endpoint_idle"}
    assert report.spend_by_kind["endpoint_idle"] == pytest.approx(1.408)
    assert report.model == view_data.ModelSummary(version="v2", accuracy=0.9721, invalid_rate=0.0028)
    assert report.prices_as_of


def test_an_empty_storage_root_is_an_empty_report(tmp_path: Path) -> None:
    report = view_data.build_report(storage_path(tmp_path.as_uri()))
    assert (report.partitions, report.training, report.spend_by_kind, report.model) == ([], [], {}, None)


def test_numbers_are_formatted_for_both_local_cents_and_production_dollars() -> None:
    assert view_data.usd(0.26395) == "$0.2640"
    assert view_data.usd(0.0000642) == "$0.0001"
    assert view_data.usd(21.27) == "$21.27" and view_data.usd(12345.6) == "$12,345.60"
    assert view_data.usd(None) == view_data.percent(None) == "—"
    assert view_data.percent(0.0028) == "0.3%" and view_data.thousands(1234567) == "1,234,567"
