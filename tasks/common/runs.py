"""What names a DAG run across its retries, clears and recreations: the key every pipeline derives its job names,
versions and prefixes from (training jobs and model versions, backlog transform jobs)."""

from __future__ import annotations

from datetime import datetime


def run_identity(run_id: str, logical_date: datetime | None, run_after: datetime) -> tuple[str, datetime]:
    """(key, time) naming a DAG run for as long as Airflow considers it the same run.

    The logical date when there is one: unique per DAG and kept when a run is cleared or recreated for the same date
    (`dags test <date>` recreates it under a new run id). Asset-triggered runs have none: their run id, then.
    """
    return (logical_date.isoformat(), logical_date) if logical_date else (run_id, run_after)
