"""Decode, validate and normalise images to upright 8-bit RGB.

Every file is fully decoded (not just sniffed), so truncated files are caught here and not in a training step at
3 a.m. Anything unusable raises `ImageRejected` with a reason a person can act on.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import PurePosixPath

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MIN_SIDE = 8
DEFAULT_MAX_PIXELS = 64_000_000  # larger than any real photo; beyond this a file is treated as a decompression bomb

_IGNORED_NAMES = {"thumbs.db", "desktop.ini", "icon\r"}
_IGNORED_DIRS = {"__macosx", ".ds_store"}


class ImageRejected(ValueError):
    """An input image that cannot be used; the message is the recorded reason."""


def is_ignored(relpath: str) -> bool:
    """Hidden and OS bookkeeping files (`.DS_Store`, `__MACOSX/`, `Thumbs.db`) are not data."""
    parts = PurePosixPath(relpath).parts
    return any(p.startswith(".") or p.lower() in _IGNORED_DIRS for p in parts) or (parts[-1].lower() in _IGNORED_NAMES)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Palette, alpha, CMYK, grey and 16-bit modes → 8-bit RGB; transparency is composited on white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode != "F" or arr.max() > 1.0 else 1.0
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode in ("RGB", "L") and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def load_image(data: bytes, *, min_side: int = DEFAULT_MIN_SIDE, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Fully decode `data` into an upright RGB image (first frame of an animation), or raise ImageRejected."""
    if not data:
        raise ImageRejected("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > max_pixels:
                raise ImageRejected(
                    f"decompression bomb: {width}x{height} = {width * height:,} pixels > limit {max_pixels:,}"
                )
            img.seek(0)
            img.load()
            upright = ImageOps.exif_transpose(img)
    except ImageRejected:
        raise
    except UnidentifiedImageError:
        raise ImageRejected("not an image: format not recognised") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected(f"decompression bomb: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageRejected(f"truncated or corrupt image: {exc}") from None
    if min(upright.size) < min_side:
        raise ImageRejected(f"too small: {upright.width}x{upright.height}, minimum side is {min_side} px")
    return _to_rgb(upright)


def content_hash(img: Image.Image) -> str:
    """sha256 of the decoded pixels: the same picture saved twice (or re-encoded losslessly) hashes the same."""
    digest = hashlib.sha256(f"{img.mode}:{img.width}x{img.height}:".encode())
    digest.update(img.tobytes())
    return digest.hexdigest()


def encode_png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
