"""What SageMaker capacity costs: the dated price table and the price of an endpoint.

Prices come from `include/prices/sagemaker_prices.yaml` (dated; refreshed by hand); a missing entry is an error,
never a silent $0.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

import yaml

from tasks.common.settings import INCLUDE_DIR
from tasks.records.endpoint import EndpointRecord

PRICE_TABLE = INCLUDE_DIR / "prices" / "sagemaker_prices.yaml"
Usage = Literal["training", "inference"]


@cache
def price_table() -> dict[str, Any]:
    return yaml.safe_load(PRICE_TABLE.read_text())


def hourly_price(region: str, instance_type: str, usage: Usage, *, spot: bool = False) -> float:
    """USD per instance-hour from the committed table; a missing entry is an error, never a silent $0."""
    table = price_table()
    try:
        price = float(table["regions"][region][usage][instance_type])
    except KeyError:
        raise ValueError(
            f"no {usage} price for {instance_type} in {region} in {PRICE_TABLE.name} (as of {table['as_of']}); "
            "add it there"
        ) from None
    return price * (1 - table["spot_discount"]) if spot else price


def usd_per_1000_images(usd: float, images: int) -> float | None:
    """The unit every cost figure of this project is quoted in; None without images."""
    return 1000 * usd / images if images else None


@dataclass(frozen=True)
class EndpointPricing:
    backend: str
    region: str  # of the price table ("local" prices the local server as a small CPU instance)
    instance_type: str
    instance_count: int

    @classmethod
    def of_record(cls, record: EndpointRecord) -> EndpointPricing:
        """From an endpoint record, priced in the region its backend recorded."""
        return cls(record.backend, record.price_region, record.instance_type, record.instance_count)

    @property
    def price_per_hour_usd(self) -> float:
        return hourly_price(self.region, self.instance_type, "inference")

    def usd(self, seconds: float) -> float:
        return seconds / 3600 * self.price_per_hour_usd * self.instance_count
