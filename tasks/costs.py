"""Cost accounting: a dated price table, one Parquet ledger for training and inference, DuckDB to query it.

Ledger rows are stored one file per (kind, key) — a training job, a classified partition, a day of endpoint idle
time — so recording the same thing twice replaces the row instead of duplicating it.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from functools import cache
from typing import Any, Literal

import yaml
from airflow.sdk import ObjectStoragePath

from tasks import storage
from tasks.settings import INCLUDE_DIR

PRICE_TABLE = INCLUDE_DIR / "prices" / "sagemaker_prices.yaml"
LEDGER_DIR = "ledger"
Kind = Literal["training", "classification", "endpoint_idle"]
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


@dataclass(frozen=True)
class LedgerEntry:
    kind: Kind
    key: str  # job name, dt partition, or day
    backend: str
    region: str
    instance_type: str
    instance_count: int
    billable_seconds: float
    price_per_hour_usd: float
    model_version: str = ""
    endpoint: str = ""
    images: int = 0
    images_ok: int = 0
    images_invalid: int = 0
    images_rejected: int = 0
    images_failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    spot: bool = False
    run_id: str = ""
    price_table_as_of: str = field(default_factory=lambda: str(price_table()["as_of"]))
    recorded_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @property
    def cost_usd(self) -> float:
        return self.billable_seconds / 3600 * self.price_per_hour_usd * self.instance_count

    @property
    def usd_per_1000_images(self) -> float | None:
        return 1000 * self.cost_usd / self.images if self.images else None

    def row(self) -> dict[str, Any]:
        return {**asdict(self), "cost_usd": self.cost_usd, "usd_per_1000_images": self.usd_per_1000_images}


def _entry_path(costs_root: ObjectStoragePath, kind: str, key: str) -> ObjectStoragePath:
    return costs_root / LEDGER_DIR / f"kind={kind}" / f"{key.replace('/', '_')}.parquet"


def record(costs_root: ObjectStoragePath, entry: LedgerEntry) -> ObjectStoragePath:
    """Write (or replace) the ledger row for (kind, key)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([entry.row()]), buf)
    path = _entry_path(costs_root, entry.kind, entry.key)
    storage.write_bytes_atomic(path, buf.getvalue())
    return path


LEDGER_COLUMNS = [f.name for f in fields(LedgerEntry)] + ["cost_usd", "usd_per_1000_images"]


def read_ledger(costs_root: ObjectStoragePath):
    """The whole ledger as one Arrow table (empty with the right columns when nothing is recorded yet)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    ledger = costs_root / LEDGER_DIR
    files = sorted(p for p in ledger.rglob("*.parquet")) if ledger.exists() else []
    tables = [pq.read_table(io.BytesIO(p.read_bytes())) for p in files]
    if not tables:
        return pa.table({name: pa.array([], pa.string()) for name in LEDGER_COLUMNS})
    return pa.concat_tables(tables, promote_options="default")


def query(costs_root: ObjectStoragePath, sql: str) -> list[dict[str, Any]]:
    """Run DuckDB SQL over the ledger, exposed as the table `ledger`."""
    import duckdb

    ledger = read_ledger(costs_root)  # noqa: F841 — DuckDB finds the Arrow table by its variable name
    con = duckdb.connect()
    try:
        result = con.execute(sql)
        names = [d[0] for d in result.description]
        return [dict(zip(names, row, strict=True)) for row in result.fetchall()]
    finally:
        con.close()
