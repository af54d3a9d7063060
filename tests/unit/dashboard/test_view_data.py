"""The numbers behind the "Costs & quality" view, from a ledger and a registry written by the project's own writers."""

from __future__ import annotations

import hashlib
import math
from dataclasses import replace
from datetime import date
from pathlib import Path

import pytest
from airflow.sdk import ObjectStoragePath

from support.registry import register
from tasks.common.storage import storage_path
from tasks.costs.ledger import LedgerEntry, record
from tasks.dashboard import view_data
from tasks.training.registry import promote_if_better


def classification(dt: str, images: int, invalid: int, seconds: float) -> LedgerEntry:
    return LedgerEntry(
        kind="classification",
        key=dt,
        backend="sagemaker",
        region="us-east-1",
        instance_type="ml.g5.xlarge",
        instance_count=1,
        billable_seconds=seconds,
        price_per_hour_usd=1.408,
        model_version="v2",
        images=images,
        images_ok=images - invalid - 1,
        images_invalid=invalid,
        images_rejected=1,
    )


@pytest.fixture
def storage_root(tmp_path: Path) -> ObjectStoragePath:
    """Two nights, one training job, an idle endpoint day, and a promoted model."""
    root = storage_path(tmp_path.as_uri())
    for entry in (
        classification("2026-11-01", images=2000, invalid=40, seconds=1348),
        classification("2026-11-02", images=1000, invalid=5, seconds=674),
        LedgerEntry(
            kind="training",
            key="ft-v2",
            backend="sagemaker",
            region="us-east-1",
            instance_type="ml.g5.12xlarge",
            instance_count=2,
            billable_seconds=5400,
            price_per_hour_usd=7.09,
            model_version="v2",
            spot=True,
        ),
        LedgerEntry(
            kind="endpoint_idle",
            key="ep/2026-11-02",
            backend="sagemaker",
            region="us-east-1",
            instance_type="ml.g5.xlarge",
            instance_count=1,
            billable_seconds=3600,
            price_per_hour_usd=1.408,
        ),
    ):
        record(root / "costs", entry)
    metrics = {"accuracy": 0.9721, "invalid_rate": 0.0028}
    register(root / "models", "v2", "s3://m/v2", taxonomy="hotel", metrics=metrics, promote=False)
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


def commit(root: ObjectStoragePath, dt: str, passed: bool) -> None:
    """A committed partition the way classify_images writes it (rows do not matter here)."""
    from tasks.nightly import predictions

    verdict = {"passed": passed, "checks": [{"name": "invalid_rate", "value": 0.2, "passed": passed}]}
    predictions.publish(predictions.partition_dir(root / "predictions", dt), "t", [], {"quality": verdict})


def test_partitions_carry_their_gate_verdict_and_days_without_a_commit_are_gaps(storage_root) -> None:
    record(storage_root / "costs", classification("2026-11-05", images=10, invalid=1, seconds=6))
    commit(storage_root, "2026-11-01", passed=True)
    commit(storage_root, "2026-11-02", passed=False)
    commit(storage_root, "2026-11-04", passed=True)  # zero images, no ledger row: committed, shown, not a gap
    report = view_data.build_report(storage_root, today=date(2026, 11, 6))
    days = [(d.dt, "gap" if d.gap else d.quality) for d in report.days]
    assert days == [
        ("2026-11-05", "not committed"),
        ("2026-11-04", "no data"),  # zero images: nothing to judge, never "passed"
        ("2026-11-03", "gap"),
        ("2026-11-02", "violated"),
        ("2026-11-01", "passed"),
    ]
    assert report.days[3].quality_detail == "invalid_rate: 0.2"
    zero = report.days[1]
    assert (zero.images, zero.cost_usd, zero.run_link) == (0, None, "")


def test_a_missing_latest_night_is_a_gap_from_the_start_date_on(storage_root, monkeypatch) -> None:
    """Issue 24: gaps counted only between the oldest and the newest partition, so a failed latest night never
    showed. Days up to the last complete day are expected from the nightly start date on."""
    monkeypatch.setenv("PIPELINE_CLASSIFY_START_DATE", "2026-11-04")
    commit(storage_root, "2026-11-01", passed=True)
    commit(storage_root, "2026-11-02", passed=True)
    report = view_data.build_report(storage_root, today=date(2026, 11, 6))
    assert [(d.dt, d.gap) for d in report.days] == [
        ("2026-11-05", True),  # yesterday: missing
        ("2026-11-04", True),
        ("2026-11-02", False),  # 2026-11-03: after the newest partition and before the start date: not expected
        ("2026-11-01", False),
    ]


def test_promoted_is_not_serving_until_an_endpoint_serves_it(storage_root) -> None:
    from support.endpoints import endpoint_record
    from tasks.common import storage

    assert (
        view_data.build_report(storage_root).serving_text == "NOT serving: no endpoint deployed (run deploy_endpoint)"
    )
    record = endpoint_record("http://x", model_version="v1").to_dict() | {"deployed_at": "2026-11-30T10:00:00+00:00"}
    storage.write_json(storage_root / "serving" / "endpoint.json", record)
    text = view_data.build_report(storage_root).serving_text
    assert text.startswith("NOT serving v2: endpoint llava-classifier serves v1 since 2026-11-30T10:00:00+00:00")
    storage.write_json(storage_root / "serving" / "endpoint.json", record | {"model_version": "v2"})
    serving = "serving on endpoint llava-classifier since 2026-11-30T10:00:00+00:00"
    assert view_data.build_report(storage_root).serving_text == serving


def test_a_versions_review_is_shown_with_who_when_and_why(storage_root) -> None:
    from tasks.training.registry import record_review

    record_review(storage_root / "models", "v2", approved=True, by="alice", at="2026-12-02T10:00:00", comment="ok")
    (row,) = view_data.build_report(storage_root).models
    assert row.review == "approved by alice at 2026-12-02T10:00:00: ok"


def test_model_history_with_decisions_run_links_and_the_chosen_versions_metrics(storage_root) -> None:
    models = storage_root / "models"
    metrics = {"accuracy": 0.5, "macro_f1": 0.4, "invalid_rate": 0.1}
    run = {"dag_id": "finetune_llava", "run_id": "manual__2026-12-01T10:00:00+00:00"}
    register(models, "v3", "m", taxonomy="hotel", metrics=metrics, promote=False, **run)
    promote_if_better(models, "v3", min_accuracy=0.9, tolerance=0.01)
    (models / "v3").mkdir(parents=True)
    (models / "v3" / "metrics.json").write_text('{"per_class": {"Room": {"f1": 0.4}}, "n_test": 7}')
    report = view_data.build_report(storage_root, "v3")
    assert [(m.version, m.status) for m in report.models] == [("v3", "rejected"), ("v2", "production")]
    assert "below the minimum" in report.models[0].decision
    assert report.models[0].run_link == "../dags/finetune_llava/runs/manual__2026-12-01T10%3A00%3A00%2B00%3A00"
    assert report.models[1].run_link == ""  # registered before versions kept their run
    assert (report.selected.version, report.selected.per_class, report.selected.n_test) == (
        "v3",
        {"Room": {"f1": 0.4}},
        7,
    )
    assert view_data.build_report(storage_root).selected.version == "v2"  # default: production
    assert view_data.build_report(storage_root, "nope").selected is None


def test_only_registered_versions_confusion_matrices_are_served(storage_root) -> None:
    models = storage_root / "models"
    (models / "v2").mkdir(parents=True)
    (models / "v2" / "confusion_matrix.png").write_bytes(b"\x89PNG fake")
    (models / "v2" / "risk_coverage.png").write_bytes(b"\x89PNG curve")
    (models / "v2" / "metrics.json").write_text('{"secret": 1}')
    assert view_data.confusion_matrix_png(models, "v2") == b"\x89PNG fake"
    assert view_data.model_plot_png(models, "v2", "risk_coverage.png") == b"\x89PNG curve"
    assert view_data.model_plot_png(models, "v2", "metrics.json") is None  # only the plots, nothing else
    assert view_data.confusion_matrix_png(models, "..") is None
    assert view_data.confusion_matrix_png(models, "v9") is None


def test_each_day_shows_the_estimated_accuracy_of_its_answers(storage_root) -> None:
    from tasks.nightly import predictions

    stats = predictions.RowStats(confidence_sum=45.0, confidence_histogram=[0] * 18 + [0, 50]).to_dict()
    summary = {"quality": {"verdict": "passed"}, "stats": stats}
    predictions.publish(predictions.partition_dir(storage_root / "predictions", "2026-11-01"), "t", [], summary)
    commit(storage_root, "2026-11-02", passed=True)  # committed before confidence existed
    report = view_data.build_report(storage_root, today=date(2026, 11, 3))
    assert [(d.dt, d.estimated_accuracy) for d in report.days] == [("2026-11-02", None), ("2026-11-01", 0.9)]


def test_each_partition_links_to_the_run_of_the_dag_that_committed_it(tmp_path: Path) -> None:
    """A day committed by classify_backlog links to that run; a row written before the ledger named its DAG (no
    dag_id column at all) was classify_images'."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    root = storage_path(tmp_path.as_uri())
    nightly = replace(classification("2026-11-01", 10, 0, 6), run_id="scheduled__2026-11-02", dag_id="classify_images")
    backlog = replace(classification("2026-11-02", 10, 0, 6), run_id="manual__b", dag_id="classify_backlog")
    for entry in (nightly, backlog):
        record(root / "costs", entry)
    old = {k: v for k, v in replace(nightly, key="2026-10-31", run_id="scheduled__old").row().items() if k != "dag_id"}
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([old]), buf)
    (root / "costs" / "ledger" / "kind=classification" / "2026-10-31.parquet").write_bytes(buf.getvalue())

    links = {p.dt: p.run_link for p in view_data.build_report(root).partitions}
    assert links == {
        "2026-11-02": "../dags/classify_backlog/runs/manual__b",
        "2026-11-01": "../dags/classify_images/runs/scheduled__2026-11-02",
        "2026-10-31": "../dags/classify_images/runs/scheduled__old",
    }


# -- production accuracy from the review queue ----------------------------------------------------------------------


def wilson_by_hand(correct: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def reviewed_queue(root: ObjectStoragePath) -> None:
    """Golden samples on two days of week 45 (3 reviewed: 2 confirmed) and one of week 46 (1 of 2 reviewed,
    confirmed), and two doubtful rows (one reviewed: never counted in the accuracy)."""
    from tasks.model.taxonomy import load_taxonomy
    from tasks.review import decisions, queue

    def rows(dt: str, n: int) -> list[dict]:
        return [
            {"key": f"{dt}-{i}.png", "content_sha256": hashlib.sha256(f"{dt}/{i}".encode()).hexdigest(),
             "status": "ok", "label": "3", "confidence": 0.9 - i / 10, "runner_up": "8", "model_version": "v2"}
            for i in range(n)
        ]  # fmt: skip

    digits = load_taxonomy("digits")
    days = {"2026-11-02": (2, 0), "2026-11-05": (1, 2), "2026-11-09": (2, 0)}  # dt -> (golden, doubtful)
    added = {dt: queue.enqueue_day(root, dt, rows(dt, g + d), golden=g, budget=d) for dt, (g, d) in days.items()}
    answers = {("2026-11-02", 0): "3", ("2026-11-02", 1): "5", ("2026-11-05", 0): "3", ("2026-11-09", 0): "3"}
    answers[("2026-11-05", 1)] = "1"  # a doubtful row's correction
    for (dt, n), label in answers.items():
        decisions.record(root, added[dt][n], label, reviewer="ana", taxonomy=digits)


def test_production_accuracy_per_week_beside_the_estimate_and_the_queue_counts(storage_root) -> None:
    reviewed_queue(storage_root)
    for dt, confidence in (("2026-11-02", 0.8), ("2026-11-05", 0.9), ("2026-11-09", 0.7)):
        record(storage_root / "costs", classification(dt, images=10, invalid=0, seconds=6))
        commit_with_confidence(storage_root, dt, confidence)
    review = view_data.build_report(storage_root).review
    assert [(w.measured.week, w.measured.correct, w.measured.reviewed) for w in review.weeks] == [
        ("2026-W46", 1, 1),
        ("2026-W45", 2, 3),
    ]
    latest, week45 = review.weeks
    assert review.latest == latest and latest.estimated_accuracy == pytest.approx(0.7)
    assert (week45.measured.low, week45.measured.high) == pytest.approx(wilson_by_hand(2, 3), abs=1e-6)
    assert week45.estimated_accuracy == pytest.approx(0.85)  # two days of 9 ok rows each
    counts = {c.reason: (c.pending, c.reviewed) for c in review.counts}
    assert counts == {"low_confidence": (1, 1), "golden_sample": (1, 4), "mislabel_flag": (0, 0)}


def commit_with_confidence(root: ObjectStoragePath, dt: str, confidence: float) -> None:
    """A committed partition whose ok rows have this mean calibrated confidence."""
    from tasks.nightly import predictions

    stats = predictions.RowStats(rows=9, confidence_sum=confidence * 9)
    stats.confidence_histogram[0] = 9  # nine confident rows (which bin does not matter here)
    manifest = {"quality": {}, "stats": stats.to_dict()}
    predictions.publish(predictions.partition_dir(root / "predictions", dt), "t", [], manifest)


def test_no_reviewed_golden_sample_means_no_weeks(storage_root) -> None:
    review = view_data.build_report(storage_root).review
    assert review.weeks == [] and review.latest is None
    assert [(c.reason, c.pending, c.reviewed) for c in review.counts] == [
        ("low_confidence", 0, 0),
        ("golden_sample", 0, 0),
        ("mislabel_flag", 0, 0),
    ]


def test_the_weekly_estimate_weighs_partitions_by_their_ok_rows() -> None:
    def day(dt: str, ok: int, estimate: float | None) -> view_data.PartitionRow:
        return view_data.PartitionRow(dt, ok, ok, 0, 0, 0, None, None, "v2", estimated_accuracy=estimate)

    partitions = [day("2026-11-02", 30, 0.9), day("2026-11-03", 10, 0.5), day("2026-11-04", 5, None)]
    partitions += [day("2026-11-05", 0, 0.1), day("not-a-day", 10, 0.1), day("2026-11-09", 1, 0.6)]
    assert view_data.weekly_estimates(partitions) == pytest.approx({"2026-W45": 0.8, "2026-W46": 0.6})


def test_a_version_trained_on_reviewed_labels_names_them() -> None:
    from tasks.records.reviews import FoldedReviews

    folded = FoldedReviews("review/published/20261109T060000Z-ab.json", "ab" * 32, used=5, relabelled=2, added=3)
    line = view_data.folded_text(folded)
    assert line == "5 reviewed labels (2 relabelled, 3 added) from review/published/20261109T060000Z-ab.json"
    assert view_data.folded_text(None) == ""
