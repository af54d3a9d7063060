"""Decode, validate and normalise images to upright 8-bit RGB, with bounded memory.

Every file is fully decoded (not just sniffed), so truncated files are caught here and not in a training step at
3 a.m. Anything unusable raises `ImageRejected` with a reason a person can act on.

Memory per decode is bounded: files above MAX_FILE_BYTES are refused before their bytes are read (tasks.common.
storage.read_bytes_capped), images above DEFAULT_MAX_PIXELS before their pixels are decoded, and normalising keeps
at most one full-size copy next to the decoded image (palette transparency is flattened in the palette, alpha is
pasted onto one RGB canvas, 16-bit is scaled in row blocks). `decode_slot()` bounds how many decodes a process runs
at once, so its peak is about DECODE_SLOTS x the per-image peak (measured by bench/decode_memory.py; README).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import io
import threading
import warnings
from pathlib import PurePosixPath

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MIN_SIDE = 8
# A 40 MP photo (a high-end phone or DSLR); beyond this a file is treated as a decompression bomb. The worst case at
# the cap (an RGBA PNG) peaks at ~9 bytes/pixel while it is normalised: ~360 MB (bench/decode_memory.py).
DEFAULT_MAX_PIXELS = 40_000_000
MAX_FILE_BYTES = 32 * 2**20  # no real photo at the pixel cap is larger; refused before its bytes are read
DECODE_SLOTS = 2  # decodes at once per process, whatever the request concurrency
_DECODE_GATE = threading.BoundedSemaphore(DECODE_SLOTS)
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
_ROWS_PER_BLOCK = 256  # 16-bit scaling works on blocks of rows: its temporaries stay small

_IGNORED_NAMES = {"thumbs.db", "desktop.ini", "icon\r"}
_IGNORED_DIRS = {"__macosx", ".ds_store"}


class ImageRejected(ValueError):
    """An input image that cannot be used; the message is the recorded reason."""


def is_ignored(relpath: str) -> bool:
    """Hidden and OS bookkeeping files (`.DS_Store`, `__MACOSX/`, `Thumbs.db`) are not data."""
    parts = PurePosixPath(relpath).parts
    return any(p.startswith(".") or p.lower() in _IGNORED_DIRS for p in parts) or (parts[-1].lower() in _IGNORED_NAMES)


def decode_slot() -> threading.BoundedSemaphore:
    """`with decode_slot():` around decode + normalise + resize: at most DECODE_SLOTS full-size images per process."""
    _return_freed_buffers_to_the_os()
    return _DECODE_GATE


@functools.cache
def _return_freed_buffers_to_the_os() -> None:
    """Allocations above 1 MB are mmapped, so a freed image buffer goes back to the OS. glibc otherwise raises its
    mmap threshold after the first large free and keeps such buffers in per-thread arenas: a shard's peak then grew
    with its thread count, not its decode slots (16 worst-case images, 8 threads: +1.3 GB instead of +0.6 GB)."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to tune
        ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, 1 << 20)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Palette, alpha, CMYK, grey and 16-bit modes → 8-bit RGB; transparency is composited on white. At most one
    full-size copy is made next to `img` (besides an 8-bit alpha mask)."""
    if img.mode in ("I;16", "I;16B", "I;16L"):
        img = _scale_to_l(np.asarray(img), lambda block: (block.astype(np.uint32) * 255 + 32767) // 65535)
    elif img.mode in ("I", "F"):
        arr = np.asarray(img)
        top = 65535.0 if img.mode != "F" or arr.max() > 1.0 else 1.0
        img = _scale_to_l(arr, lambda block: np.clip(block.astype(np.float32) / top * 255.0 + 0.5, 0, 255))
    if img.mode == "P":
        if "transparency" in img.info or img.palette.mode == "RGBA":
            _flatten_palette(img)
        return img.convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode in ("RGB", "L") and "transparency" in img.info):
        rgba = img if img.mode == "RGBA" else img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return img if img.mode == "RGB" else img.convert("RGB")


def _scale_to_l(arr: np.ndarray, scale) -> Image.Image:
    out = np.empty(arr.shape, dtype=np.uint8)
    for start in range(0, arr.shape[0], _ROWS_PER_BLOCK):
        out[start : start + _ROWS_PER_BLOCK] = scale(arr[start : start + _ROWS_PER_BLOCK])
    return Image.fromarray(out, mode="L")


def _flatten_palette(img: Image.Image) -> None:
    """Composite a palette image's transparency on white inside its palette (256 entries, not 40 M pixels)."""
    rgba = img.getpalette("RGBA") or []
    entries = len(rgba) // 4
    alpha = [rgba[4 * i + 3] for i in range(entries)]
    transparency = img.info.pop("transparency", None)
    if isinstance(transparency, int) and transparency < entries:
        alpha[transparency] = 0
    elif isinstance(transparency, bytes):
        alpha[: len(transparency)] = list(transparency[:entries])
    flat = [
        (rgba[4 * i + c] * alpha[i] + 255 * (255 - alpha[i]) + 127) // 255 for i in range(entries) for c in range(3)
    ]
    img.putpalette(flat, "RGB")


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
            upright = ImageOps.exif_transpose(img, in_place=True) or img  # in place: no copy when upright
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
