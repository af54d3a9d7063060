"""Shared fixtures: storage roots and image files of every awkward kind."""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files with slow tests first, each file's tests in their own order. `make test`'s workers take files in this
    order (--no-loadscope-reorder; xdist's default puts files with many tests first, which left the two slowest,
    of one or two tests each, to run last side by side), so the long ones start at once and quick ones fill the end."""

    def file_of(item: pytest.Item) -> str:
        return item.nodeid.split("::", 1)[0]

    first = {}
    for index, item in enumerate(items):
        first.setdefault(file_of(item), index)
    slow = {file_of(item) for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: (file_of(item) not in slow, first[file_of(item)]))


def encode(img: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def pattern(size: tuple[int, int] = (40, 30), seed: int = 0) -> Image.Image:
    """A distinct RGB picture per seed (so content hashes differ)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), mode="RGB")


@pytest.fixture
def image_bytes() -> Callable[..., bytes]:
    return lambda seed=0, size=(40, 30), fmt="PNG": encode(pattern(size, seed), fmt)


def hostile_files(seed: int = 1000) -> dict[str, bytes | None]:
    """Every kind of bad and awkward input, keyed by relative path under a folder-per-label drop."""
    rgba = pattern(seed=seed).convert("RGBA")
    rgba.putalpha(128)
    cmyk = pattern(seed=seed + 1).convert("CMYK")
    sixteen = Image.fromarray(np.arange(40 * 30, dtype=np.uint16).reshape(30, 40) * 50)
    palette = pattern(seed=seed + 2).convert("P", palette=Image.Palette.ADAPTIVE)
    frames = [pattern(seed=seed + 3 + i).convert("P") for i in range(2)]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:])
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    rotated = encode(pattern((40, 30), seed + 5), "JPEG", exif=exif.tobytes())
    good = encode(pattern(seed=seed + 6))
    bomb = Image.new("L", (9000, 9000))
    return {
        "3/good.png": good,
        "3/ünïcode name with spaces.png": encode(pattern(seed=seed + 7)),
        "3/rgba.png": encode(rgba),
        "3/cmyk.jpg": encode(cmyk, "JPEG"),
        "3/sixteen-bit.png": encode(sixteen),
        "3/palette.png": encode(palette),
        "3/animated.gif": gif.getvalue(),
        "3/exif-rotated.jpg": rotated,
        "3/empty.png": b"",
        "3/truncated.png": good[: len(good) // 2],
        "3/not-an-image.png": b"hello, I am a text file\n" * 10,
        "3/tiny.png": encode(Image.new("RGB", (4, 4))),
        "3/bomb.png": encode(bomb, optimize=True),
        "3/duplicate-of-good.png": good,
        "4/conflict-a.png": encode(pattern(seed=seed + 8)),
        "5/conflict-b.png": encode(pattern(seed=seed + 8)),
        "Kitchen/unknown-label.png": encode(pattern(seed=seed + 9)),
        "no-label-folder.png": encode(pattern(seed=seed + 10)),
        ".DS_Store": b"\0\0\0\1Bud1",
        "3/.hidden.png": encode(pattern(seed=seed + 11)),
        "__MACOSX/3/._good.png": b"junk",
        "3/Thumbs.db": b"junk",
    }


EXPECTED_KEPT = {
    "3/good.png",
    "3/ünïcode name with spaces.png",
    "3/rgba.png",
    "3/cmyk.jpg",
    "3/sixteen-bit.png",
    "3/palette.png",
    "3/animated.gif",
    "3/exif-rotated.jpg",
}
EXPECTED_IGNORED = {".DS_Store", "3/.hidden.png", "__MACOSX/3/._good.png", "3/Thumbs.db"}


def write_tree(root: Path, files: dict[str, bytes | None]) -> None:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data or b"")
