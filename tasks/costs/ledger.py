"""The cost ledger: one Parquet row per training job, classified partition and endpoint-day, queried with DuckDB.

Ledger rows are stored one file per (kind, key) — a training job, a classified partition, a day of endpoint idle
time — so recording the same thing twice replaces the row instead of duplicating it.

A persistent endpoint (a SageMaker real-time endpoint, the local server) bills every hour it is up. The day `dt`
of such an endpoint is split into two rows: the busy seconds that produced partition dt (kind "classification",
keyed by dt) and the rest of the hours it was up that day (kind "endpoint_idle", keyed by endpoint and dt).
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

from airflow.sdk import ObjectStoragePath

from tasks.common import storage
from tasks.costs.pricing import EndpointPricing, price_table, usd_per_1000_images

LEDGER_DIR = "ledger"
Kind = Literal["training", "classification", "endpoint_idle"]


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
    dag_id: str = ""  # the DAG whose run (run_id) wrote the row; rows written before it was recorded have none
    day: str = ""  # the UTC day the cost belongs to; empty: the day it was recorded
    price_table_as_of: str = field(default_factory=lambda: str(price_table()["as_of"]))
    recorded_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @property
    def cost_usd(self) -> float:
        return self.billable_seconds / 3600 * self.price_per_hour_usd * self.instance_count

    @property
    def usd_per_1000_images(self) -> float | None:
        return usd_per_1000_images(self.cost_usd, self.images)

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
    tables = [pq.read_table(io.BytesIO(p.read_bytes()), use_threads=False) for p in files]  # see predictions.read_table
    if not tables:
        return pa.table({name: pa.array([], pa.string()) for name in LEDGER_COLUMNS})
    table = pa.concat_tables(tables, promote_options="permissive")  # e.g. 3600 (int64) and 3600.5 (double)
    for name in LEDGER_COLUMNS:  # a column added later (dag_id) is null in the rows written before it
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(len(table), pa.string()))
    return table


def query(costs_root: ObjectStoragePath, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Run DuckDB SQL over the ledger, exposed as the table `ledger`; `params` fill `$name` placeholders."""
    import duckdb

    ledger = read_ledger(costs_root)  # noqa: F841 — DuckDB finds the Arrow table by its variable name
    # One thread: the ledger is small, and DuckDB's worker threads can outlive the interpreter's shutdown and abort
    # the process ("terminate called without an active exception", duckdb/duckdb#13904) — seen twice at the end of
    # `predictions-summary` on a loaded machine, which failed `make demo` after every step had succeeded.
    con = duckdb.connect(config={"threads": 1})
    try:
        result = con.execute(sql, params)
        names = [d[0] for d in result.description]
        return [dict(zip(names, row, strict=True)) for row in result.fetchall()]
    finally:
        con.close()


def uptime_seconds(day: str, deployed_at: str, now: datetime) -> float:
    """Seconds of `day` (UTC) during which an endpoint deployed at `deployed_at` was up, until `now`."""
    start = datetime.combine(date.fromisoformat(day), datetime.min.time(), UTC)
    up_from = max(start, datetime.fromisoformat(deployed_at))
    up_to = min(start + timedelta(days=1), now)
    return max(0.0, (up_to - up_from).total_seconds())


def classification_entry(
    dt: str,
    pricing: EndpointPricing,
    *,
    endpoint: str,
    model_version: str,
    stats: dict[str, Any],
    busy_seconds: float,
    run_id: str,
    dag_id: str,
) -> LedgerEntry:
    """The classification row of partition dt: `busy_seconds` of `pricing`'s instances, whichever path (the
    endpoint, a batch transform) produced it, in run `run_id` of DAG `dag_id`. `stats` is a RowStats dict
    (tasks.nightly.predictions)."""
    statuses = stats["statuses"]
    return LedgerEntry(
        kind="classification",
        key=dt,
        backend=pricing.backend,
        region=pricing.region,
        instance_type=pricing.instance_type,
        instance_count=pricing.instance_count,
        price_per_hour_usd=pricing.price_per_hour_usd,
        model_version=model_version,
        endpoint=endpoint,
        run_id=run_id,
        dag_id=dag_id,
        day=dt,
        billable_seconds=busy_seconds,
        images=stats["rows"],
        images_ok=statuses["ok"],
        images_invalid=statuses["invalid"],
        images_rejected=statuses["rejected"],
        images_failed=statuses["failed"],
        prompt_tokens=stats["prompt_tokens"],
        completion_tokens=stats["completion_tokens"],
    )


def partition_entries(
    classification: LedgerEntry, *, deployed_at: str, now: datetime | None = None
) -> list[LedgerEntry]:
    """A persistent endpoint's partition: its classification row (`classification_entry`) and the endpoint's idle
    row for day dt — the hours it was up that day minus the busy seconds."""
    dt, busy_seconds = classification.key, classification.billable_seconds
    up = uptime_seconds(dt, deployed_at, now or datetime.now(UTC))
    idle = LedgerEntry(
        kind="endpoint_idle",
        key=f"{classification.endpoint}/{dt}",
        billable_seconds=max(0.0, up - busy_seconds),
        **{name: getattr(classification, name) for name in _ENDPOINT_FIELDS},
    )
    return [classification, idle]


_ENDPOINT_FIELDS = (
    "backend",
    "region",
    "instance_type",
    "instance_count",
    "price_per_hour_usd",
    "model_version",
    "endpoint",
    "run_id",
    "dag_id",
    "day",
)
