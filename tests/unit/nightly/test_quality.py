"""The quality gate: rates over the images the model was asked about, label shift against trailing partitions."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowFailException

from tasks.common.storage import storage_path
from tasks.nightly import predictions, quality
from tasks.nightly.predictions import RowStats
from tasks.nightly.quality import QualityThresholds, evaluate, gate, label_shift


def stats(ok: int = 90, invalid: int = 0, rejected: int = 0, failed: int = 0, labels: dict | None = None) -> RowStats:
    return RowStats(
        rows=ok + invalid + rejected + failed,
        statuses=Counter(ok=ok, invalid=invalid, rejected=rejected, failed=failed),
        labels=Counter(labels if labels is not None else {"1": ok // 2, "2": ok - ok // 2}),
    )


def checks(s: RowStats, baseline: Counter, **thresholds) -> dict[str, float | None]:
    return {c.name: c.value for c in evaluate(s, baseline, QualityThresholds(**thresholds))}


def test_rates_leave_rejected_images_out_and_the_label_check_needs_enough_data() -> None:
    values = checks(stats(ok=80, invalid=15, rejected=100, failed=5), Counter({"1": 40, "2": 40}))
    assert values == {"invalid_rate": 0.15, "failed_rate": 0.05, "label_shift": 0.0}
    assert checks(stats(ok=10), Counter({"1": 40, "2": 40}))["label_shift"] is None  # too few answers today
    assert checks(stats(), Counter())["label_shift"] is None  # no trailing partitions yet
    assert checks(stats(ok=0, rejected=3, labels={}), Counter())["invalid_rate"] is None  # nothing was asked


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
    assert {c["name"]: c["passed"] for c in verdict["checks"]} == {
        "invalid_rate": True,
        "failed_rate": True,
        "label_shift": False,
    }
    with pytest.raises(AirflowFailException, match=r"label_shift: 0.4000 \(threshold 0.2500\) VIOLATED"):
        gate(shifted, root, "2026-11-02", QualityThresholds())
    assert gate(stats(ok=100), root, "2026-11-02", QualityThresholds())["passed"]


def test_thresholds_come_from_the_quality_param() -> None:
    params = {"max_invalid_rate": 0.5, "on_violation": "warn", "unknown": 1}
    assert quality.QualityThresholds.from_params(params) == QualityThresholds(max_invalid_rate=0.5, on_violation="warn")
