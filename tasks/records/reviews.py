"""review → curation → training → registry: which reviewed labels a dataset (and every model trained on it) holds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tasks.records.base import parse, to_doc


@dataclass(frozen=True)
class ReviewSnapshot:
    """One published set of reviewed labels: `review/published/<name>.json`, the `reviewed_labels` asset's extra.

    `snapshot` is a storage reference (relative to the root). `digest` names the labels it holds (each image's
    identity and reviewed label), so publishing the same labels twice is recognised; `labels` counts them,
    `corrections` the ones where the reviewer gave another label than the model's.
    """

    snapshot: str
    digest: str
    labels: int
    corrections: int
    published_at: str

    def to_dict(self) -> dict[str, Any]:
        return to_doc(self)

    @classmethod
    def from_dict(cls, doc: Any, where: str = "review snapshot") -> ReviewSnapshot:
        return parse(cls, doc, where)


@dataclass(frozen=True)
class FoldedReviews:
    """What curation did with a review snapshot: the labels it used, kept with the dataset and the model versions
    trained on it. `relabelled`: images of the drop whose label a review changed; `added`: reviewed production
    images the drop did not hold; `used`: every image whose label came from a review (confirmations included)."""

    snapshot: str
    digest: str
    used: int
    relabelled: int
    added: int

    def to_dict(self) -> dict[str, Any]:
        return to_doc(self)

    @classmethod
    def from_dict(cls, doc: Any, where: str = "folded reviews") -> FoldedReviews:
        return parse(cls, doc, where)
