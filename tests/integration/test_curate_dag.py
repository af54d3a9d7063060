"""curate_dataset end to end through `bin/airflow dags test`: the same code on file:// and on s3:// (moto)."""

from __future__ import annotations

import hashlib
import json

from datasets import load_from_disk

from support.digits import relabel_training_digit
from tasks.common.storage import fsspec_options, plain_uri, storage_path
from tasks.model.demo_data import known_label, write_incoming, write_labelled
from tasks.model.taxonomy import load_taxonomy
from tasks.review import decisions
from tasks.review.queue import QueueItem
from tests.conftest import EXPECTED_KEPT, hostile_files
from tests.integration.conftest import AirflowRunner, Moto

DAY = "2026-11-05"


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


def test_published_reviews_reach_the_next_dataset_on_s3(sagemaker_airflow: AirflowRunner, moto: Moto) -> None:
    """A reviewer's correction of a production image (read back from incoming/ on S3) and a relabelled training
    image are published by publish_reviews and folded in by curate_dataset; a rerun publishes nothing."""
    storage = sagemaker_airflow.env["PIPELINE_STORAGE_URI"]
    root = storage_path(storage, "aws_default")
    write_labelled(root / "raw" / "digits", range(40))
    write_incoming(root / "incoming", [DAY], [1500])
    data = (root / "incoming" / f"dt={DAY}" / "digit-1500.png").read_bytes()
    production = QueueItem(
        DAY, "digit-1500.png", hashlib.sha256(data).hexdigest(), "v1", "0", 0.3, "8", "golden_sample", ""
    )
    truth = known_label("digit-1500.png")
    decisions.record(root, production, truth, reviewer="ana", taxonomy=load_taxonomy("digits"))
    snapshot = relabel_training_digit(root, 7, "1", "bo")  # publishes both: it stands in for the first publish
    assert snapshot.labels == 2

    again = sagemaker_airflow.dags_test("publish_reviews", {"min_new_labels": 1})
    assert again.succeeded and "already published" in again.output, again.output[-3000:]
    dataset_uri = f"{storage}/datasets/reviewed"
    conf = {"raw_uri": f"{storage}/raw/digits", "dataset_uri": dataset_uri, "taxonomy": "digits"}
    result = sagemaker_airflow.dags_test("curate_dataset", conf)
    assert result.succeeded, result.output[-5000:]
    report = json.loads((storage_path(dataset_uri, "aws_default") / "curation_report.json").read_text())
    assert (report["reviews"]["snapshot"], report["reviews"]["used"]) == (snapshot.snapshot, 2)
    kept = {row["path"]: row for row in report["kept"]}
    assert kept[f"reviewed://dt={DAY}/digit-1500.png"]["label"] == truth
    assert kept["7/digit-0007.png"] | {"phash": None, "split": None} == kept["7/digit-0007.png"] | {
        "label": "1",
        "label_source": "review",
        "drop_label": "7",
        "phash": None,
        "split": None,
    }
    assert "Reviewed labels from review/published/" in result.output
