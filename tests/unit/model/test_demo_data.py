"""The demo's bad night: corrupted copies of the held-out digits, written like any other day."""

from __future__ import annotations

import numpy as np
from PIL import Image

from tasks.common.storage import storage_path
from tasks.model.demo_data import CORRUPTIONS, digits, write_incoming


def test_each_corruption_keeps_the_size_and_changes_the_pixels():
    digit = next(digits([5]))
    for name, damage in CORRUPTIONS.items():
        damaged = damage(digit.image, 4)
        assert damaged.size == digit.image.size and damaged.mode == "RGB", name
        difference = np.abs(np.asarray(damaged, dtype=int) - np.asarray(digit.image, dtype=int)).mean()
        assert difference > 10, f"{name} barely changed the image ({difference:.1f} grey levels)"
        assert damage(digit.image, 4).tobytes() == damaged.tobytes(), f"{name} is not reproducible"


def test_a_corrupted_day_has_every_image_damaged_in_turn(tmp_path):
    incoming = storage_path(tmp_path.as_uri())
    indices = list(range(6))
    assert write_incoming(incoming, ["2026-11-01"], indices, corrupt=True) == {"2026-11-01": 6}
    written = sorted((tmp_path / "dt=2026-11-01").iterdir())
    originals = {d.index: d.image for d in digits(indices)}
    for position, path in enumerate(written):
        image = Image.open(path).convert("RGB")
        expected = list(CORRUPTIONS.values())[position % len(CORRUPTIONS)](originals[position], position)
        assert image.tobytes() == expected.tobytes(), path.name
