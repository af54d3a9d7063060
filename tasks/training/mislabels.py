"""Likely mislabels from the trained model's label probabilities: confident learning's rule, without cleanlab (AGPL).

Per split, each label's threshold is the model's average probability of that label over the rows given it (its
self-confidence). A row counts towards the confident joint under the most probable label whose probability reaches
that label's threshold; a row counted under another label than its given one is flagged (an off-diagonal entry).
Flags are suggestions for people: nothing here changes a label.

The flags file (`label_flags.jsonl`, in `models/<version>/`) has one JSON object per flagged row, schema
`label_flag/1`, written for the review queue (issue 22) to ingest as it is: `sha256` (the image's content hash,
the key in the curation report), `path` (in the raw drop, when the report has it), `split`, `index` (row in that
split), `given_label`, `given_probability`, `given_threshold`, `suggested_label`, `suggested_probability`,
`suggested_threshold`, `model_version`, `dataset_uri`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

SCORES_FILE = "label_scores.jsonl"  # written by include/training/train.py
FLAGS_FILE = "label_flags.jsonl"
FLAG_SCHEMA = "label_flag/1"


def class_thresholds(rows: list[dict[str, Any]]) -> dict[str, float]:
    """label -> the average probability of that label over the rows given it."""
    totals: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        totals[row["label"]].append(row["probabilities"][row["label"]])
    return {label: sum(values) / len(values) for label, values in totals.items()}


def confident_label(probabilities: dict[str, float], thresholds: dict[str, float]) -> str | None:
    """The most probable label whose probability reaches its threshold (ties: the first label); None if none."""
    reaching = [label for label, p in probabilities.items() if label in thresholds and p >= thresholds[label]]
    return max(reaching, key=lambda label: probabilities[label], default=None)


def flag_mislabels(scores: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of label_scores.jsonl (`split`, `index`, `sha256`, `label`, `probabilities`) -> flags, per split."""
    by_split: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in scores:
        by_split[row["split"]].append(row)
    flags = []
    for split, rows in by_split.items():
        thresholds = class_thresholds(rows)
        for row in rows:
            given, probabilities = row["label"], row["probabilities"]
            suggested = confident_label(probabilities, thresholds)
            if suggested is not None and suggested != given:
                flags.append(
                    {
                        "schema": FLAG_SCHEMA,
                        "sha256": row["sha256"],
                        "split": split,
                        "index": row["index"],
                        "given_label": given,
                        "given_probability": probabilities[given],
                        "given_threshold": round(thresholds[given], 6),
                        "suggested_label": suggested,
                        "suggested_probability": probabilities[suggested],
                        "suggested_threshold": round(thresholds[suggested], 6),
                    }
                )
    return flags
