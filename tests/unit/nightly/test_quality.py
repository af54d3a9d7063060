"""The quality gate: rates over the images the model was asked about, label shift against trailing partitions, and
the label-free confidence checks (estimated accuracy, low-confidence share, drop against the trailing days)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowFailException

from tasks.common.storage import storage_path
from tasks.nightly import predictions, quality
from tasks.nightly.predictions import RowStats
from tasks.nightly.quality import QualityThresholds, evaluate, gate, label_shift


def stats(
    ok: int = 90,
    invalid: int = 0,
    rejected: int = 0,
    failed: int = 0,
    labels: dict | None = None,
    confidence: list[float] | None = None,
) -> RowStats:
    """Row statistics as committed rows would give them; `confidence`: one value per ok row (None: no confidence)."""
    import pyarrow as pa

    counted = RowStats(
        rows=ok + invalid + rejected + failed,
        statuses=Counter(ok=ok, invalid=invalid, rejected=rejected, failed=failed),
        labels=Counter(labels if labels is not None else {"1": ok // 2, "2": ok - ok // 2}),
    )
    if confidence is not None:
        table = pa.table({"status": ["ok"] * len(confidence), "label": ["1"] * len(confidence)})
        scored = RowStats().add(
            table.append_column("confidence", pa.array(confidence))
            .append_column("prompt_tokens", pa.array([0] * len(confidence)))
            .append_column("completion_tokens", pa.array([0] * len(confidence)))
        )
        counted.confidence_sum, counted.confidence_histogram = scored.confidence_sum, scored.confidence_histogram
    return counted


def checks(s: RowStats, baseline: RowStats, **thresholds) -> dict[str, float | None]:
    return {c.name: c.value for c in evaluate(s, baseline, QualityThresholds(**thresholds))}


def test_rates_leave_rejected_images_out_and_the_label_check_needs_enough_data() -> None:
    values = checks(stats(ok=80, invalid=15, rejected=100, failed=5), stats(ok=80))
    assert {name: values[name] for name in ("invalid_rate", "failed_rate", "label_shift")} == {
        "invalid_rate": 0.15,
        "failed_rate": 0.05,
        "label_shift": 0.0,
    }
    assert checks(stats(ok=10), stats(ok=80))["label_shift"] is None  # too few answers today
    assert checks(stats(), RowStats())["label_shift"] is None  # no trailing partitions yet
    assert checks(stats(ok=0, rejected=3, labels={}), RowStats())["invalid_rate"] is None  # nothing was asked


def test_confidence_estimates_accuracy_counts_doubtful_answers_and_compares_with_the_trailing_days() -> None:
    usual = stats(ok=100, confidence=[0.96] * 90 + [0.42] * 10)
    blurred = stats(ok=100, confidence=[0.9] * 40 + [0.35] * 60)  # the same label mix, far less sure
    values = checks(blurred, usual)
    assert values["estimated_accuracy"] == pytest.approx(0.57)
    assert values["low_confidence_share"] == pytest.approx(0.6)
    assert values["confidence_drop"] == pytest.approx(0.906 - 0.57)
    assert values["label_shift"] == 0.0  # what the gate saw before: nothing
    assert checks(usual, usual)["confidence_drop"] == pytest.approx(0.0)
    assert checks(stats(ok=100), usual)["estimated_accuracy"] is None  # rows without confidence: not judged
    assert checks(stats(ok=10, confidence=[0.1] * 10), usual)["estimated_accuracy"] is None  # too few: noise
    violated = [c.name for c in evaluate(blurred, usual, QualityThresholds()) if not c.passed]
    assert violated == ["estimated_accuracy", "low_confidence_share", "confidence_drop"]
    assert all(c.passed for c in evaluate(usual, usual, QualityThresholds()))


def test_a_day_with_nothing_to_judge_has_no_data_not_passed(tmp_path: Path) -> None:
    root = storage_path(f"file://{tmp_path}")
    empty = gate(stats(ok=0, labels={}), root, "2026-11-02", QualityThresholds())
    assert (empty["verdict"], empty["estimated_accuracy"]) == ("no data", None)
    assert gate(stats(ok=90, confidence=[0.9] * 90), root, "2026-11-02", QualityThresholds())["verdict"] == "passed"


def test_label_shift_is_the_total_variation_distance() -> None:
    assert label_shift(Counter({"a": 5, "b": 5}), Counter({"a": 50, "b": 50})) == 0
    assert label_shift(Counter({"a": 10}), Counter({"b": 3})) == 1
    assert label_shift(Counter({"a": 3, "b": 1}), Counter({"a": 1, "b": 1})) == pytest.approx(0.25)


def commit(root: Path, dt: str, labels: dict[str, int]) -> None:
    summary = {"stats": stats(ok=sum(labels.values()), labels=labels).to_dict()}
    predictions.publish(predictions.partition_dir(storage_path(f"file://{root}"), dt), "t", [], summary)


def test_gate_compares_with_committed_trailing_partitions_and_warns_or_fails(tmp_path: Path) -> None:
    root = storage_path(f"file://{tmp_path}")
    commit(tmp_path, "2026-11-01", {"1": 50, "2": 50})
    commit(tmp_path, "2026-10-20", {"3": 100})  # older than the trailing window: not in the baseline
    shifted = stats(ok=100, labels={"1": 90, "2": 10})

    verdict = gate(shifted, root, "2026-11-02", QualityThresholds(on_violation="warn"))
    assert not verdict["passed"] and verdict["baseline_dts"] == ["2026-11-01"]
    assert verdict["verdict"] == "violated"
    assert {c["name"]: c["passed"] for c in verdict["checks"]} == {
        "invalid_rate": True,
        "failed_rate": True,
        "label_shift": False,
        "estimated_accuracy": True,  # no confidence in these rows: skipped
        "low_confidence_share": True,
        "confidence_drop": True,
    }
    with pytest.raises(AirflowFailException, match=r"label_shift: 0.4000 \(max 0.2500\) VIOLATED"):
        gate(shifted, root, "2026-11-02", QualityThresholds())
    assert gate(stats(ok=100), root, "2026-11-02", QualityThresholds())["passed"]


def test_thresholds_come_from_the_quality_param() -> None:
    params = {"max_invalid_rate": 0.5, "on_violation": "warn", "unknown": 1}
    assert quality.QualityThresholds.from_params(params) == QualityThresholds(max_invalid_rate=0.5, on_violation="warn")
