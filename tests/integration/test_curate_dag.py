"""curate_dataset end to end through `bin/airflow dags test`: the same code on file:// and on s3:// (moto)."""

from __future__ import annotations

import json

from datasets import load_from_disk

from tasks.common.storage import fsspec_options, plain_uri, storage_path
from tasks.model.demo_data import write_labelled
from tests.conftest import EXPECTED_KEPT, hostile_files
from tests.integration.conftest import AirflowRunner, Moto


def _drop(raw_uri: str, conn_id: str | None = None) -> int:
    """40 real digits plus every kind of bad file."""
    raw = storage_path(raw_uri, conn_id)
    n = write_labelled(raw, range(40))
    for rel, data in hostile_files().items():
        path = raw / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data or b"")
    return n + len(hostile_files())


def _check(runner: AirflowRunner, raw_uri: str, dataset_uri: str, total: int, conn_id: str | None = None) -> None:
    result = runner.dags_test("curate_dataset", {"raw_uri": raw_uri, "dataset_uri": dataset_uri, "taxonomy": "digits"})
    assert result.succeeded, result.output[-5000:]
    dataset = storage_path(dataset_uri, conn_id)
    report = json.loads((dataset / "curation_report.json").read_text())
    counts = report["counts"]
    assert report["total"] == total == counts["kept"] + counts["rejected"] + counts["ignored"]
    assert counts["kept"] == 40 + len(EXPECTED_KEPT)  # 40 digits + the awkward-but-good files
    dd = load_from_disk(plain_uri(dataset), storage_options=fsspec_options(dataset) or None)
    assert sum(len(split) for split in dd.values()) == counts["kept"]
    assert "Curated" in result.output and "rejected" in result.output  # readable summary in the task log
    near = report["near_duplicates"]  # the digits taxonomy's threshold, and the leakage check
    assert near["policy"]["max_distance"] == 2 and near["groups_across_splits"] == 0
    split_of = {row["sha256"]: row["split"] for row in report["kept"]}
    assert all(len({split_of[m["sha256"]] for m in group["members"]}) == 1 for group in near["groups"])
    assert "Near-duplicates (pHash within 2 bits)" in result.output


def test_curate_on_local_storage(local_airflow: AirflowRunner) -> None:
    storage = local_airflow.env["PIPELINE_STORAGE_URI"]
    total = _drop(f"{storage}/raw/digits")
    _check(local_airflow, f"{storage}/raw/digits", f"{storage}/datasets/test", total)


def test_curate_on_s3(sagemaker_airflow: AirflowRunner, moto: Moto) -> None:
    storage = sagemaker_airflow.env["PIPELINE_STORAGE_URI"]
    total = _drop(f"{storage}/raw/digits", "aws_default")
    _check(sagemaker_airflow, f"{storage}/raw/digits", f"{storage}/datasets/test", total, "aws_default")
    keys = [o["Key"] for o in moto.boto3_client("s3").list_objects_v2(Bucket=moto.bucket)["Contents"]]
    assert "pipeline/datasets/test/curation_report.json" in keys
    assert any(k.startswith("pipeline/datasets/test/train/") for k in keys)
