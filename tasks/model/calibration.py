"""Calibrated confidence from the one token that carries the decision.

Every answer is "this is a photo of <label>."; under the serving runtime's label constraint the words before the
label are forced and, when every label's first token is distinct, the label's first token decides the answer (the
rest is forced too). So a prediction's confidence is that token's probability among the labels' first tokens, and
averaging over the whole answer would be wrong: forced tokens (log-probability 0) dilute it by label length.

A model's raw probabilities are over-confident (or under-); one temperature T, fitted on the validation split by
minimising the negative log-likelihood (Guo et al., 2017, "On Calibration of Modern Neural Networks"), rescales
every log-probability by 1/T. Evaluation fits it from the training script's teacher-forced first-token scores and
serving applies it to the first-token log-probabilities vLLM returns: the same numbers, so rows carry the
calibrated value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

TEMPERATURE_BOUNDS = (0.05, 20.0)  # a fitted T at a bound means the scores carry almost no information
ECE_BINS = 15  # Guo et al.'s choice; with a few hundred rows more bins are mostly empty


@dataclass(frozen=True)
class Ranked:
    """A prediction's calibrated decision: the top label, its probability, the next label and the gap between."""

    label: str
    confidence: float
    runner_up: str | None
    margin: float


@dataclass(frozen=True)
class Calibration:
    """How to read a model's confidence: each label's decision token (the first token of its answer after the shared
    words, in the model's tokenizer) and the temperature fitted on the validation split (1.0: not calibrated)."""

    decision_tokens: dict[str, int]
    temperature: float = 1.0

    def rank(self, logprobs: Mapping[str, float]) -> Ranked:
        """The calibrated ranking of label log-probabilities (any subset of labels, e.g. a server's top-k)."""
        if not logprobs:
            raise ValueError("no label log-probabilities to rank")
        labels = list(logprobs)
        probabilities = softmax(np.array([logprobs[label] for label in labels]), self.temperature)
        order = np.argsort(-probabilities, kind="stable")
        top = int(order[0])
        second = int(order[1]) if len(order) > 1 else None
        confidence = float(probabilities[top])
        runner = float(probabilities[second]) if second is not None else 0.0
        return Ranked(labels[top], confidence, labels[second] if second is not None else None, confidence - runner)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Calibration:
        tokens = doc["decision_tokens"]
        if not isinstance(tokens, Mapping) or not all(isinstance(v, int) for v in tokens.values()):
            raise ValueError(f"decision_tokens must map labels to token ids, found {tokens!r}")
        return cls(decision_tokens={str(k): int(v) for k, v in tokens.items()}, temperature=float(doc["temperature"]))


def softmax(logprobs: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """softmax(logprobs / T) along the last axis; log-probabilities need not be normalised."""
    scaled = np.asarray(logprobs, dtype=np.float64) / temperature
    scaled = scaled - scaled.max(axis=-1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=-1, keepdims=True)


def fit_temperature(logprobs: np.ndarray, truth: np.ndarray) -> float:
    """The T minimising the validation NLL of softmax(logprobs / T) (a 1-D convex problem in log T)."""
    from scipy.optimize import minimize_scalar

    def nll(log_t: float) -> float:
        return negative_log_likelihood(softmax(logprobs, math.exp(log_t)), truth)

    low, high = (math.log(bound) for bound in TEMPERATURE_BOUNDS)
    return float(math.exp(minimize_scalar(nll, bounds=(low, high), method="bounded").x))


def negative_log_likelihood(probabilities: np.ndarray, truth: np.ndarray) -> float:
    picked = probabilities[np.arange(len(truth)), truth]
    return float(-np.log(np.clip(picked, 1e-12, 1.0)).mean())


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """Σ over equal-width confidence bins of |accuracy − mean confidence| × the bin's share of rows."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    error = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            error += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(error)


def reliability(probabilities: np.ndarray, truth: np.ndarray) -> dict[str, float | None]:
    """NLL, ECE, multi-class Brier score, accuracy and the AUROC of confidence for telling right from wrong."""
    from sklearn.metrics import roc_auc_score

    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == truth
    one_hot = np.eye(probabilities.shape[1])[truth]
    both = 0 < correct.sum() < len(correct)  # AUROC needs right and wrong answers
    return {
        "nll": negative_log_likelihood(probabilities, truth),
        "ece": expected_calibration_error(confidence, correct),
        "brier": float(((probabilities - one_hot) ** 2).sum(axis=1).mean()),
        "accuracy": float(correct.mean()),
        "auroc": float(roc_auc_score(correct, confidence)) if both else None,
    }


def risk_coverage(confidence: np.ndarray, correct: np.ndarray, points: int = 20) -> list[dict[str, float]]:
    """Accuracy of the most confident share of predictions, for coverages 1/points … 1 (ties broken by order)."""
    order = np.argsort(-confidence, kind="stable")
    hits = np.cumsum(correct[order])
    curve = []
    for step in range(1, points + 1):
        kept = max(1, round(len(order) * step / points))
        curve.append({"coverage": kept / len(order), "accuracy": float(hits[kept - 1] / kept)})
    return curve


def accuracy_at_coverage(confidence: np.ndarray, correct: np.ndarray, coverage: float) -> float:
    """Accuracy of the `coverage` share of predictions with the highest confidence."""
    kept = max(1, round(len(confidence) * coverage))
    order = np.argsort(-confidence, kind="stable")[:kept]
    return float(correct[order].mean())


def as_arrays(rows: Sequence[Mapping[str, float]], labels: Sequence[str], truth: Sequence[str]) -> tuple:
    """Rows of {label: log-probability} and their true labels as (n, k) and (n,) arrays in `labels` order."""
    index = {label: i for i, label in enumerate(labels)}
    return np.array([[row[label] for label in labels] for row in rows]), np.array([index[t] for t in truth])
