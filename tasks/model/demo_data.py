"""Real demo images without a download: scikit-learn ships its handwritten digits inside the package."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
from airflow.sdk import ObjectStoragePath
from PIL import Image

from tasks.model.images import encode_png

DIGIT_SIDE = 32  # the 8x8 digits upscaled to the tiny model's vision tile


@dataclass(frozen=True)
class Digit:
    index: int
    label: str
    image: Image.Image


def digits(indices: Iterable[int] | None = None) -> Iterator[Digit]:
    """The 1,797 digits as 32x32 RGB images (8x8 originals, 16 grey levels, upscaled without smoothing)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    for i in indices if indices is not None else range(len(bunch.target)):
        grey = (255 - bunch.images[i] * (255 / 16)).astype(np.uint8)  # dark ink on white paper
        img = Image.fromarray(grey, mode="L").resize((DIGIT_SIDE, DIGIT_SIDE), Image.Resampling.NEAREST)
        yield Digit(index=i, label=str(int(bunch.target[i])), image=img.convert("RGB"))


def _file_name(index: int) -> str:
    return f"digit-{index:04d}.png"


def _write(path: ObjectStoragePath, digit: Digit) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_png(digit.image))


def write_labelled(dest: ObjectStoragePath, indices: range | None = None) -> int:
    """Write digits as `dest/<label>/digit-<index>.png` (the folder-per-label layout); returns the count."""
    n = 0
    for d in digits(indices):
        _write(dest / d.label / _file_name(d.index), d)
        n += 1
    return n


def held_out_indices(curation_report: dict[str, Any]) -> list[int]:
    """Digits of a curated dataset's test split: never trained on (the training script trains on `train`, validates
    on `validation`), so classifying them measures the model honestly."""
    return sorted(digit_index(row["path"]) for row in curation_report["kept"] if row["split"] == "test")


def digit_index(key: str) -> int:
    """The scikit-learn index in a demo file name (`…/digit-0123.png` → 123)."""
    match = re.search(r"digit-(\d+)\.png$", key)
    if match is None:
        raise ValueError(f"{key!r} is not a demo digit file name")
    return int(match.group(1))


@cache
def _targets() -> tuple[str, ...]:
    from sklearn.datasets import load_digits

    return tuple(str(int(t)) for t in load_digits().target)


def known_label(key: str) -> str:
    """The true digit of a demo file, for accuracy: the model only ever sees the pixels."""
    return _targets()[digit_index(key)]


def blurred(image: Image.Image, position: int) -> Image.Image:
    """Out of focus: a Gaussian blur wider than a digit's strokes."""
    from PIL import ImageFilter

    return image.filter(ImageFilter.GaussianBlur(radius=3))


def rotated(image: Image.Image, position: int) -> Image.Image:
    """Uploaded sideways or upside down (EXIF orientation lost)."""
    return image.rotate((90, 180, 270)[position % 3], fillcolor=(255, 255, 255))


def off_domain(image: Image.Image, position: int) -> Image.Image:
    """Not a digit at all: a patch of one of scikit-learn's bundled photos (a temple, a flower)."""

    photos = _sample_photos()
    photo = photos[position % len(photos)]
    side = min(photo.size) // 4
    x, y = (position * 37) % (photo.width - side), (position * 53) % (photo.height - side)
    return photo.crop((x, y, x + side, y + side)).resize(image.size, Image.Resampling.BILINEAR)


@cache
def _sample_photos() -> tuple[Image.Image, ...]:
    from sklearn.datasets import load_sample_images

    return tuple(Image.fromarray(array) for array in load_sample_images().images)


# What a bad night looks like while its label mix stays usual: each corrupted image gets the next of these in turn.
CORRUPTIONS: dict[str, Callable[[Image.Image, int], Image.Image]] = {
    "blur": blurred,
    "rotate": rotated,
    "off_domain": off_domain,
}


def write_incoming(
    incoming: ObjectStoragePath, days: list[str], indices: list[int], *, corrupt: bool = False
) -> dict[str, int]:
    """Spread digits round-robin over `days` as `incoming/dt=<day>/digit-<index>.png` (no label in the path);
    each day's partition is replaced as a whole. `corrupt`: every image is blurred, rotated or replaced by an
    off-domain photo patch, in turn (CORRUPTIONS). Returns images per day."""
    from tasks.common import storage

    for day in days:
        storage.remove_tree(incoming / storage.partition_name(day), owner=incoming)
    counts = dict.fromkeys(days, 0)
    damage = list(CORRUPTIONS.values())
    for position, digit in enumerate(digits(indices)):
        day = days[position % len(days)]
        if corrupt:
            digit = Digit(digit.index, digit.label, damage[position % len(damage)](digit.image, position))
        _write(incoming / storage.partition_name(day) / _file_name(digit.index), digit)
        counts[day] += 1
    return counts


def score(rows: list[dict[str, Any]]) -> tuple[int, int]:
    """(correct, asked) for prediction rows of demo digits: asked = every image that was not rejected, so invalid
    and failed rows count as wrong."""
    asked = [row for row in rows if row["status"] != "rejected"]
    return sum(row["status"] == "ok" and row["label"] == known_label(row["key"]) for row in asked), len(asked)
