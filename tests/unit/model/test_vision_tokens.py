"""The token arithmetic against the real LlavaNextProcessor, and the resize policy against its budget."""

from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image

from tasks.model.tiny_model import build_processor
from tasks.model.vision_tokens import (
    PRODUCTION_GEOMETRY,
    TINY_GEOMETRY,
    ResizePolicy,
    VisionGeometry,
    image_tokens,
    plan_resize,
    prepare_image,
)


@pytest.fixture(scope="module", params=[PRODUCTION_GEOMETRY, TINY_GEOMETRY], ids=["production", "tiny"])
def processor_and_geometry(request):
    return build_processor(["a"], request.param), request.param


def processor_tokens(processor, img: Image.Image) -> int:
    """Image tokens the real processor puts into input_ids for one image."""
    out = processor(text="a <image>", images=img, return_tensors="np")
    return int(np.sum(out["input_ids"] == processor.image_token_id))


@pytest.mark.parametrize(
    ("size", "tokens"),
    [
        ((550, 412), 2340),
        ((800, 600), 2340),
        ((1920, 1080), 1948),
        ((448, 336), 1368),
        ((336, 336), 1176),
        ((320, 180), 1608),
        ((252, 336), 1032),
        ((336, 252), 1368),
        ((400, 300), 1368),
    ],
)
def test_known_production_counts(size, tokens):
    assert image_tokens(*size, PRODUCTION_GEOMETRY) == tokens


def test_geometry_from_processor_round_trips(processor_and_geometry):
    processor, geometry = processor_and_geometry
    assert VisionGeometry.from_processor(processor) == geometry


def test_arithmetic_matches_the_real_processor(processor_and_geometry):
    processor, geometry = processor_and_geometry
    tile = geometry.tile_size
    rng = random.Random(7)
    # Every aspect-ratio regime: tiny, square, wide, tall, extreme panoramas, and sizes around the tile edges.
    sizes = {(tile, tile), (tile - 1, tile + 1), (3 * tile, tile // 3), (tile // 4, 2 * tile), (1, tile)}
    sizes |= {(rng.randint(1, 4 * tile), rng.randint(1, 4 * tile)) for _ in range(30)}
    for w, h in sorted(sizes):
        assert image_tokens(w, h, geometry) == processor_tokens(processor, Image.new("RGB", (w, h))), (w, h)


@pytest.mark.parametrize("budget", [1176, 1200, 1400, 1800, 2400, None])
def test_plans_stay_within_budget_and_never_enlarge(budget):
    policy = ResizePolicy(budget)
    rng = random.Random(budget)
    for _ in range(300):
        w, h = rng.randint(16, 5000), rng.randint(16, 5000)
        plan = plan_resize(w, h, policy)
        assert plan.image_tokens == image_tokens(*plan.canvas)
        assert budget is None or plan.image_tokens <= budget, (w, h)
        assert plan.content[0] <= w and plan.content[1] <= h
        assert plan.content[0] <= plan.canvas[0] and plan.content[1] <= plan.canvas[1]
        if budget is None:
            assert plan.canvas == plan.content  # no budget: never letterboxed


def test_default_budget_letterboxes_landscape_photos_to_one_square_tile():
    plan = plan_resize(800, 600)
    assert (plan.content, plan.canvas, plan.image_tokens) == ((336, 252), (336, 336), 1176)


def test_without_budget_images_shrink_only_to_what_the_processor_keeps():
    plan = plan_resize(4032, 3024, ResizePolicy(None))
    assert plan.canvas == (672, 504)
    assert plan.image_tokens == image_tokens(4032, 3024) == 2340
    assert plan_resize(320, 180, ResizePolicy(None)).canvas == (320, 180)


def test_a_larger_budget_buys_more_pixels():
    pixels = [plan_resize(1920, 1080, ResizePolicy(b)).effective_pixels for b in (1200, 1800, None)]
    assert pixels == sorted(pixels) and pixels[0] < pixels[-1]


def test_budget_below_one_square_tile_is_refused():
    with pytest.raises(ValueError, match="below 1176"):
        ResizePolicy(1000)


def test_prepared_image_costs_what_the_plan_says_in_the_real_processor():
    processor = build_processor(["a"], PRODUCTION_GEOMETRY)
    img = Image.new("RGB", (1600, 1200), (255, 255, 255))
    prepared = prepare_image(img, ResizePolicy(1200))
    assert prepared.size == (336, 336)
    assert processor_tokens(processor, prepared) == 1176
    # letterboxed: content centred between black bands
    assert prepared.getpixel((168, 0)) == (0, 0, 0) and prepared.getpixel((168, 335)) == (0, 0, 0)
    assert prepared.getpixel((168, 168)) == (255, 255, 255)


def test_prepare_image_returns_small_images_untouched():
    img = Image.new("RGB", (252, 336))
    assert prepare_image(img, ResizePolicy(1200)) is img
