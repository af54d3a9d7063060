"""Temperature scaling and the reliability measures, on cases whose answers are known in closed form."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tasks.model.calibration import (
    Calibration,
    accuracy_at_coverage,
    expected_calibration_error,
    fit_temperature,
    reliability,
    risk_coverage,
    softmax,
)


def overconfident(n: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two-class log-probabilities drawn from a model whose true probabilities are softmax(z / 2.5): its scores are
    2.5x too sharp, so the fitted temperature must come back near 2.5."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 4, size=(n, 1)) * np.array([[1.0, -1.0]])
    truth = np.array([rng.choice(2, p=p) for p in softmax(z, 2.5)])
    return np.log(softmax(z)), truth


def test_the_fitted_temperature_recovers_how_overconfident_the_scores_are():
    logprobs, truth = overconfident()
    temperature = fit_temperature(logprobs, truth)
    assert temperature == pytest.approx(2.5, rel=0.1)
    before, after = reliability(softmax(logprobs), truth), reliability(softmax(logprobs, temperature), truth)
    assert after["nll"] < before["nll"] and after["ece"] < before["ece"] / 2 and after["brier"] <= before["brier"]
    assert after["accuracy"] == before["accuracy"]  # scaling never changes the top label
    assert after["auroc"] == pytest.approx(before["auroc"])  # nor the order of confidences


def test_ece_is_the_gap_between_confidence_and_accuracy():
    assert expected_calibration_error(np.array([0.9] * 10), np.array([True] * 9 + [False])) == pytest.approx(0.0)
    assert expected_calibration_error(np.array([0.9] * 10), np.array([True] * 5 + [False] * 5)) == pytest.approx(0.4)


def test_auroc_needs_right_and_wrong_answers():
    all_right = reliability(np.array([[0.9, 0.1], [0.8, 0.2]]), np.array([0, 0]))
    assert all_right["auroc"] is None and all_right["accuracy"] == 1.0
    separated = reliability(np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.45, 0.55]]), np.array([0, 1, 1, 0]))
    assert separated["auroc"] == 1.0  # both right answers (0.9, 0.7) are more confident than the wrong ones


def test_risk_coverage_keeps_the_most_confident_first():
    confidence = np.array([0.99, 0.2, 0.9, 0.3, 0.8])
    correct = np.array([True, False, True, False, True])
    curve = risk_coverage(confidence, correct, points=5)
    assert [p["accuracy"] for p in curve] == [1.0, 1.0, 1.0, 0.75, 0.6]
    assert accuracy_at_coverage(confidence, correct, 0.6) == 1.0


def test_a_calibration_ranks_any_subset_of_labels_at_its_temperature():
    calibration = Calibration(decision_tokens={"cat": 7, "dog": 9, "owl": 11}, temperature=2.0)
    ranked = calibration.rank({"dog": math.log(0.8), "cat": math.log(0.15), "owl": math.log(0.05)})
    sharp = np.array([0.8, 0.15, 0.05]) ** 0.5
    assert (ranked.label, ranked.runner_up) == ("dog", "cat")
    assert ranked.confidence == pytest.approx(sharp[0] / sharp.sum())
    assert ranked.margin == pytest.approx((sharp[0] - sharp[1]) / sharp.sum())
    alone = calibration.rank({"owl": -0.01})  # a server that returned one alternative
    assert (alone.label, alone.confidence, alone.runner_up, alone.margin) == ("owl", 1.0, None, 1.0)
    assert Calibration.from_dict(calibration.to_dict()) == calibration
    with pytest.raises(ValueError, match="decision_tokens must map labels to token ids"):
        Calibration.from_dict({"decision_tokens": {"cat": "7"}, "temperature": 1.0})
