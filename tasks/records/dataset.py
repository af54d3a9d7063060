"""curation → training: what a curated dataset is, as its curation report declares it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tasks.records.base import parse
from tasks.records.reviews import FoldedReviews


@dataclass(frozen=True)
class DatasetRelease:
    """The facts of a curated dataset that training and everything after it must keep: its identity (fingerprint),
    what it teaches (taxonomy, prompt), how its images were prepared (the image-token budget and the tile size), and
    how many examples each split holds (which sizes a SageMaker plan), and which reviewed labels it holds (`reviews`;
    None: curated from the drop alone).

    Stored as the top-level fields of `<dataset>/curation_report.json` (the report also lists every input file);
    `dataset` is where that report was read, relative to the storage root.
    """

    dataset: str
    taxonomy: str
    prompt: str
    fingerprint: str
    splits: dict[str, int]
    max_image_tokens: int | None  # None: the dataset was curated without a budget (images kept at their size)
    vision_tile_size: int
    reviews: FoldedReviews | None = None

    @classmethod
    def from_report(cls, report: Any, dataset: str, where: str) -> DatasetRelease:
        """The release a curation report declares; `where` names the report in errors."""
        if not isinstance(report, dict):
            return parse(cls, report, where)  # refused: not a JSON object
        options = report.get("options") or {}
        prepared = {key: options[key] for key in ("max_image_tokens", "vision_tile_size") if key in options}
        return parse(cls, {**report, **prepared, "dataset": dataset}, where)
