"""A storage root and committed-looking prediction rows for the review tests."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from tasks.common.storage import storage_path
from tasks.model.taxonomy import load_taxonomy
from tasks.nightly import commit, predictions
from tasks.nightly.classification import PartitionJob, StagedPartition
from tasks.nightly.partitions import PartitionPlan
from tasks.nightly.predictions import RowStats


@pytest.fixture
def root(tmp_path: Path):
    return storage_path(f"file://{tmp_path}")


@pytest.fixture
def digits():
    return load_taxonomy("digits")


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def row(key: str, label: str = "3", confidence: float | None = 0.9, status: str = "ok", **extra: Any) -> dict:
    """A committed row with the fields the queue reads; its content hash is that of its key."""
    return {
        "key": key,
        "content_sha256": sha(key),
        "status": status,
        "label": label if status == "ok" else None,
        "confidence": confidence if status == "ok" else None,
        "runner_up": "8" if status == "ok" else None,
        "model_version": "v1",
        **extra,
    }


def commit_day(root, dt: str, rows: list[dict]) -> dict:
    """Commit `rows` as dt's partition the way both DAGs do (tasks.nightly.commit.publish), as if classified."""
    partition = predictions.partition_dir(root / "predictions", dt)
    job = PartitionJob(dt, "file:///in", str(partition), "t1", None, 1, "")
    columns = dict.fromkeys(name for name, _ in predictions.ROW_COLUMNS)
    table = pa.Table.from_pylist([columns | r for r in rows], schema=predictions.row_schema())
    predictions.write_table(job.run_dir / "part-0.parquet", table)
    plan = PartitionPlan(dt, "t1", listed=len(rows), ignored=0, carried=0, to_classify=len(rows), shards=[])
    staged = StagedPartition(
        [{"path": "run=t1/part-0.parquet", "rows": len(rows)}], RowStats().add(table).to_dict(), 0.0, len(rows)
    )
    return commit.publish(job, plan, staged, verdict={"passed": True})
