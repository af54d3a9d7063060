"""The budget guard: estimate what classifying N images costs before anything is spent, from the throughput the
ledger measured on the same kind of endpoint (else an assumed one), and refuse above the budget.
"""

from __future__ import annotations

from airflow.sdk import ObjectStoragePath
from airflow.sdk.exceptions import AirflowFailException

from tasks.costs.ledger import query
from tasks.costs.pricing import EndpointPricing

THROUGHPUT_SAMPLE = 14  # recent classified partitions that say how fast an endpoint is


class BudgetExceeded(AirflowFailException):
    """Refused before spending: retrying would refuse again."""


def measured_images_per_second(costs_root: ObjectStoragePath, instance_type: str, instance_count: int) -> float | None:
    """Throughput of recent classified partitions on the same kind of endpoint (images the endpoint answered or
    failed per busy second); None before the first one."""
    rows = query(
        costs_root,
        f"""
        SELECT SUM(CAST(images_ok AS BIGINT) + CAST(images_invalid AS BIGINT) + CAST(images_failed AS BIGINT))
                   AS images,
               SUM(CAST(billable_seconds AS DOUBLE)) AS seconds
        FROM (SELECT * FROM ledger WHERE kind = 'classification' AND instance_type = $type
              AND CAST(instance_count AS BIGINT) = $count AND CAST(billable_seconds AS DOUBLE) > 0
              ORDER BY key DESC LIMIT {THROUGHPUT_SAMPLE})
        """,
        {"type": instance_type, "count": instance_count},
    )
    images, seconds = rows[0]["images"], rows[0]["seconds"]
    return images / seconds if images and seconds else None


def check_budget(images: int, images_per_second: float, pricing: EndpointPricing, budget_usd: float, what: str) -> dict:
    """Estimate what classifying `images` costs and refuse when it is above `budget_usd`."""
    seconds = images / images_per_second if images else 0.0
    estimate = {
        "images": images,
        "images_per_second": images_per_second,
        "seconds": seconds,
        "usd": pricing.usd(seconds),
        "budget_usd": budget_usd,
        "price_per_hour_usd": pricing.price_per_hour_usd,
    }
    if estimate["usd"] > budget_usd:
        raise BudgetExceeded(
            f"{what}: estimated ${estimate['usd']:.4f} for {images:,} images at {images_per_second:.2f} images/s "
            f"on {pricing.instance_count} x {pricing.instance_type} (${pricing.price_per_hour_usd}/h) is above the "
            f"budget of ${budget_usd:.4f}. Raise the budget param or classify fewer images."
        )
    return estimate
