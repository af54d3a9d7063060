"""What the "Costs & quality" view shows: per-partition volume, cost and invalid rate from the cost ledger, training
spend, and the production model's held-out accuracy from the model registry.

Plain data and formatting, apart from the web layer, so tests can compute exactly the strings the page must show.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from airflow.sdk import ObjectStoragePath

from tasks.common import storage
from tasks.costs import ledger, pricing
from tasks.training import registry

MAX_PARTITIONS = 90  # a quarter of nights: enough for a trend, small enough for one page


@dataclass(frozen=True)
class PartitionRow:
    dt: str
    images: int
    images_ok: int
    images_invalid: int
    images_rejected: int
    images_failed: int
    cost_usd: float
    usd_per_1000_images: float | None
    model_version: str

    @property
    def invalid_rate(self) -> float | None:
        """Answers that were not a label, over all images of the partition."""
        return self.images_invalid / self.images if self.images else None


@dataclass(frozen=True)
class TrainingRow:
    job: str
    model_version: str
    instance: str  # "2 × ml.g5.12xlarge (spot)"
    hours: float
    cost_usd: float
    recorded_at: str


@dataclass(frozen=True)
class ModelSummary:
    version: str
    accuracy: float | None
    invalid_rate: float | None


@dataclass(frozen=True)
class CostsQualityReport:
    partitions: list[PartitionRow]  # newest first
    training: list[TrainingRow]  # newest first
    spend_by_kind: dict[str, float]
    model: ModelSummary | None
    prices_as_of: str


_PARTITIONS_SQL = f"""
SELECT key AS dt, images, images_ok, images_invalid, images_rejected, images_failed, cost_usd, usd_per_1000_images,
       model_version
FROM ledger WHERE kind = 'classification' ORDER BY key DESC LIMIT {MAX_PARTITIONS}
"""
_TRAINING_SQL = """
SELECT key AS job, model_version, instance_type, instance_count, spot, billable_seconds, cost_usd, recorded_at
FROM ledger WHERE kind = 'training' ORDER BY recorded_at DESC
"""
# An empty ledger has string columns only (tasks.costs.read_ledger): cast before summing.
_SPEND_SQL = "SELECT kind, SUM(CAST(cost_usd AS DOUBLE)) AS usd FROM ledger GROUP BY kind ORDER BY kind"


def build_report(root: ObjectStoragePath) -> CostsQualityReport:
    """Everything the view shows, from the storage root (the `costs/` ledger and the `models/` registry)."""
    costs_root = root / storage.COSTS
    partitions = [PartitionRow(**row) for row in ledger.query(costs_root, _PARTITIONS_SQL)]
    training = [_training_row(row) for row in ledger.query(costs_root, _TRAINING_SQL)]
    spend = {row["kind"]: float(row["usd"]) for row in ledger.query(costs_root, _SPEND_SQL)}
    return CostsQualityReport(
        partitions=partitions,
        training=training,
        spend_by_kind=spend,
        model=production_model(root / storage.MODELS),
        prices_as_of=str(pricing.price_table()["as_of"]),
    )


def _training_row(row: dict[str, Any]) -> TrainingRow:
    spot = " (spot)" if row["spot"] else ""
    return TrainingRow(
        job=row["job"],
        model_version=row["model_version"],
        instance=f"{row['instance_count']} × {row['instance_type']}{spot}",
        hours=row["billable_seconds"] / 3600,
        cost_usd=row["cost_usd"],
        recorded_at=row["recorded_at"],
    )


def production_model(models_root: ObjectStoragePath) -> ModelSummary | None:
    """The promoted version and its held-out metrics; None before the first promotion."""
    model = registry.production_model(models_root)
    if model is None:
        return None
    return ModelSummary(
        version=model["version"], accuracy=model["accuracy"], invalid_rate=model["metrics"].get("invalid_rate")
    )


def usd(value: float | None) -> str:
    """Dollars with enough digits for the cents-per-thousand scale of local runs."""
    if value is None:
        return "—"
    return f"${value:,.4f}" if abs(value) < 10 else f"${value:,.2f}"


def thousands(value: int) -> str:
    return f"{value:,}"


def percent(value: float | None) -> str:
    return "—" if value is None else f"{value:.1%}"
