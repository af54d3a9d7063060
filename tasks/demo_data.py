"""Real demo images without a download: scikit-learn ships its handwritten digits inside the package."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from airflow.sdk import ObjectStoragePath
from PIL import Image

from tasks.images import encode_png

DIGIT_SIDE = 32  # the 8x8 digits upscaled to the tiny model's vision tile


@dataclass(frozen=True)
class Digit:
    index: int
    label: str
    image: Image.Image


def digits(indices: range | None = None) -> Iterator[Digit]:
    """The 1,797 digits as 32x32 RGB images (8x8 originals, 16 grey levels, upscaled without smoothing)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    for i in indices if indices is not None else range(len(bunch.target)):
        grey = (255 - bunch.images[i] * (255 / 16)).astype(np.uint8)  # dark ink on white paper
        img = Image.fromarray(grey, mode="L").resize((DIGIT_SIDE, DIGIT_SIDE), Image.Resampling.NEAREST)
        yield Digit(index=i, label=str(int(bunch.target[i])), image=img.convert("RGB"))


def write_labelled(dest: ObjectStoragePath, indices: range | None = None) -> int:
    """Write digits as `dest/<label>/digit-<index>.png` (the folder-per-label layout); returns the count."""
    n = 0
    for d in digits(indices):
        path = dest / d.label / f"digit-{d.index:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode_png(d.image))
        n += 1
    return n
