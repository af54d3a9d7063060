from __future__ import annotations

import pytest
from PIL import Image

from tasks.model.images import ImageRejected, content_hash, is_ignored, load_image
from tests.conftest import encode, hostile_files, pattern

FILES = hostile_files()


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("3/empty.png", "empty file"),
        ("3/truncated.png", "truncated or corrupt"),
        ("3/not-an-image.png", "not an image"),
        ("3/tiny.png", "too small: 4x4"),
        ("3/bomb.png", "decompression bomb"),
    ],
)
def test_bad_files_are_rejected_with_a_reason(name: str, reason: str) -> None:
    with pytest.raises(ImageRejected, match=reason):
        load_image(FILES[name])


@pytest.mark.parametrize("name", ["3/rgba.png", "3/cmyk.jpg", "3/sixteen-bit.png", "3/palette.png", "3/animated.gif"])
def test_awkward_modes_become_8bit_rgb(name: str) -> None:
    img = load_image(FILES[name])
    assert img.mode == "RGB"
    assert img.size == (40, 30)


def test_alpha_is_composited_on_white() -> None:
    transparent = Image.new("RGBA", (20, 20), (255, 0, 0, 0))
    assert load_image(encode(transparent)).getpixel((5, 5)) == (255, 255, 255)


def test_sixteen_bit_is_scaled_not_clipped() -> None:
    img = Image.new("I;16", (10, 10), 65535)
    assert load_image(encode(img)).getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_is_applied() -> None:
    assert load_image(FILES["3/exif-rotated.jpg"]).size == (30, 40)  # stored landscape, displayed portrait


def test_animated_keeps_first_frame() -> None:
    first = load_image(FILES["3/animated.gif"])
    assert content_hash(first) == content_hash(load_image(encode(pattern(seed=1003).convert("P"), "GIF")))


def test_content_hash_ignores_encoding_but_not_pixels() -> None:
    img = pattern(seed=7)
    assert content_hash(load_image(encode(img, "PNG"))) == content_hash(load_image(encode(img, "BMP")))
    assert content_hash(load_image(encode(img))) != content_hash(load_image(encode(pattern(seed=8))))


@pytest.mark.parametrize(
    ("path", "ignored"),
    [
        (".DS_Store", True),
        ("a/.hidden.png", True),
        ("__MACOSX/a/x.png", True),
        ("a/Thumbs.db", True),
        ("a/photo.png", False),
        ("Room/ünï code.jpg", False),
    ],
)
def test_hidden_and_system_files_are_ignored(path: str, ignored: bool) -> None:
    assert is_ignored(path) is ignored


def test_palette_transparency_is_composited_in_the_palette() -> None:
    img = Image.new("P", (20, 20), 1)
    img.putpalette([0, 0, 0, 200, 30, 30] + [0] * 762)
    img.paste(0, (0, 0, 10, 20))
    rgb = load_image(encode(img, transparency=0))
    assert (rgb.getpixel((2, 2)), rgb.getpixel((15, 2))) == ((255, 255, 255), (200, 30, 30))


def test_decoding_is_bounded_by_the_decode_slots(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 9, defect 5: however many requests are in flight, at most DECODE_SLOTS images are decoded at once."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from tasks.model import images
    from tasks.model.vision_tokens import ResizePolicy
    from tasks.serving.client import encode_image

    active, peak, lock = 0, 0, threading.Lock()
    real = images._to_rgb

    def counting(img):
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        time.sleep(0.05)
        try:
            return real(img)
        finally:
            with lock:
                active -= 1

    monkeypatch.setattr(images, "_to_rgb", counting)
    data = encode(pattern(seed=3))
    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(lambda _: encode_image(data, ResizePolicy(None)), range(16)))
    assert peak == images.DECODE_SLOTS


def test_the_pixel_cap_refuses_before_decoding() -> None:
    bomb = encode(Image.new("P", (7000, 7000)), optimize=True)  # 6 KB, 49 MP: ~1.1 GB to decode before issue 9
    with pytest.raises(ImageRejected, match="decompression bomb: 7000x7000"):
        load_image(bomb)
