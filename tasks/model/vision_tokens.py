"""How many prompt tokens LLaVA-NeXT spends on an image, and how to resize images to stay within a budget.

Image tokens dominate the cost of a classification request (~2,300 of ~2,350 prompt tokens for a typical photo), and
the count depends only on the image size and the processor geometry. The arithmetic below mirrors transformers'
`LlavaNextProcessor._get_number_of_features` and `select_best_resolution` (vLLM uses the same processor), so a
budget can be checked without loading a processor; tests compare it against the real processor.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from PIL import Image

DEFAULT_MAX_IMAGE_TOKENS = 1200
# The processor pads its high-resolution tiles with zeros before normalising, i.e. black; letterboxing with the
# same colour shows the model nothing it does not already see at the tile borders.
PAD_COLOR = (0, 0, 0)


@dataclass(frozen=True)
class VisionGeometry:
    """The processor settings that decide the token count (pinpoints are (height, width), as in HF configs)."""

    tile_size: int  # image processor crop_size == shortest_edge == vision tower image_size
    patch_size: int  # vision tower patch size
    grid_pinpoints: tuple[tuple[int, int], ...]
    num_additional_image_tokens: int = 1  # the CLIP CLS token
    feature_select_strategy: Literal["default", "full"] = "default"  # "default" drops the CLS feature again

    @classmethod
    def from_processor(cls, processor: Any) -> VisionGeometry:
        """The geometry of a loaded `LlavaNextProcessor`, e.g. the local tiny model's."""
        image_processor = processor.image_processor
        return cls(
            tile_size=int(image_processor.crop_size["height"]),
            patch_size=int(processor.patch_size),
            grid_pinpoints=tuple((int(h), int(w)) for h, w in image_processor.image_grid_pinpoints),
            num_additional_image_tokens=int(processor.num_additional_image_tokens),
            feature_select_strategy=processor.vision_feature_select_strategy,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly, for the registry and the endpoint record (which say how images must be prepared)."""
        return asdict(self) | {"grid_pinpoints": [list(pin) for pin in self.grid_pinpoints]}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> VisionGeometry:
        return cls(**{**doc, "grid_pinpoints": tuple(tuple(pin) for pin in doc["grid_pinpoints"])})


# llava-v1.6 (CLIP ViT-L/14 at 336 px) as fine-tuned and served in production.
PRODUCTION_GEOMETRY = VisionGeometry(
    tile_size=336,
    patch_size=14,
    grid_pinpoints=((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008)),
)

# The offline tiny LLaVA-NeXT of local runs (tasks/model/tiny_model.py builds its processor from this).
TINY_GEOMETRY = VisionGeometry(tile_size=32, patch_size=8, grid_pinpoints=((32, 32), (32, 64), (64, 32), (64, 64)))


def best_resolution(width: int, height: int, geometry: VisionGeometry) -> tuple[int, int]:
    """The pinpoint (height, width) the processor resizes an image into: most image pixels kept, least padding."""
    best: tuple[int, int] = geometry.grid_pinpoints[0]
    max_effective, min_wasted = 0, float("inf")
    for pin_h, pin_w in geometry.grid_pinpoints:
        scale = min(pin_w / width, pin_h / height)
        effective = min(int(width * scale) * int(height * scale), width * height)
        wasted = pin_w * pin_h - effective
        if effective > max_effective or (effective == max_effective and wasted < min_wasted):
            best, max_effective, min_wasted = (pin_h, pin_w), effective, wasted
    return best


def image_tokens(width: int, height: int, geometry: VisionGeometry = PRODUCTION_GEOMETRY) -> int:
    """Image tokens for an image of `width`×`height`: the base tile, plus the high-resolution tiles with the
    processor's padding removed again, plus one newline token per high-resolution row of features."""
    tile, patch = geometry.tile_size, geometry.patch_size
    best_h, best_w = best_resolution(width, height, geometry)
    patches = tile // patch
    rows, cols = patches * (best_h // tile), patches * (best_w // tile)
    if width / height > cols / rows:  # wider than the grid: padding rows are dropped
        new_rows = int(round(height * (cols / width), 7))
        rows -= (rows - new_rows) // 2 * 2
    else:
        new_cols = int(round(width * (rows / height), 7))
        cols -= (cols - new_cols) // 2 * 2
    tokens = rows * cols + rows + patches * patches + geometry.num_additional_image_tokens
    return tokens - 1 if geometry.feature_select_strategy == "default" else tokens


@dataclass(frozen=True)
class ResizePolicy:
    """Keep each image within `max_image_tokens` while showing the model as many image pixels as possible.

    `max_image_tokens=None`: no budget; images are never letterboxed, only shrunk to the resolution the processor
    would shrink them to anyway (fewer bytes on the wire, the same picture for the model).
    """

    max_image_tokens: int | None = DEFAULT_MAX_IMAGE_TOKENS
    geometry: VisionGeometry = field(default=PRODUCTION_GEOMETRY)

    def __post_init__(self) -> None:
        # A letterboxed square tile is always a candidate, so its cost is the budget every image can meet.
        floor = image_tokens(self.geometry.tile_size, self.geometry.tile_size, self.geometry)
        if self.max_image_tokens is not None and self.max_image_tokens < floor:
            raise ValueError(f"max_image_tokens={self.max_image_tokens} is below {floor}, the cost of one square tile")


DEFAULT_POLICY = ResizePolicy()


@dataclass(frozen=True)
class ResizePlan:
    """What `prepare_image` does to an image: resize to `content`, centred on a `canvas` (equal: no padding)."""

    content: tuple[int, int]
    canvas: tuple[int, int]
    image_tokens: int
    effective_pixels: int  # image pixels that reach the high-resolution tiles: the quality we maximise


def _fit(width: int, height: int, box_w: int, box_h: int) -> tuple[int, int]:
    """`width`×`height` shrunk (never enlarged) to fit in the box, keeping the aspect ratio."""
    scale = min(1.0, box_w / width, box_h / height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _evaluate(content: tuple[int, int], canvas: tuple[int, int], geometry: VisionGeometry) -> ResizePlan:
    best_h, best_w = best_resolution(*canvas, geometry)
    scale = min(1.0, best_w / canvas[0], best_h / canvas[1])
    pixels = int(content[0] * content[1] * scale * scale)
    return ResizePlan(content, canvas, image_tokens(*canvas, geometry), pixels)


def plan_resize(width: int, height: int, policy: ResizePolicy = DEFAULT_POLICY) -> ResizePlan:
    """The best of: the original, a downscale to fit each pinpoint, and (under a budget) a letterbox into each
    pinpoint or the square tile. Best = most effective pixels within the budget, then fewest tokens, then the
    smallest canvas. Within one pinpoint the token count depends only on the aspect ratio, so fitting the pinpoint
    exactly is the best a plain downscale can do; the square letterbox is the one canvas every image can afford."""
    geometry, budget = policy.geometry, policy.max_image_tokens
    boxes = [(w, h) for h, w in geometry.grid_pinpoints] + [(geometry.tile_size, geometry.tile_size)]
    candidates = [_evaluate((width, height), (width, height), geometry)]
    for box in boxes:
        fitted = _fit(width, height, *box)
        candidates.append(_evaluate(fitted, fitted, geometry))
        if budget is not None:
            candidates.append(_evaluate(fitted, box, geometry))
    affordable = [c for c in candidates if budget is None or c.image_tokens <= budget]
    return min(affordable, key=lambda c: (-c.effective_pixels, c.image_tokens, c.canvas[0] * c.canvas[1]))


def prepare_image(img: Image.Image, policy: ResizePolicy = DEFAULT_POLICY) -> Image.Image:
    """Apply `plan_resize` to an RGB image (the same function must prepare training images, or train and serve
    see different pictures)."""
    plan = plan_resize(img.width, img.height, policy)
    out = img if plan.content == img.size else img.resize(plan.content, Image.Resampling.BICUBIC)
    if plan.canvas == plan.content:
        return out
    canvas = Image.new("RGB", plan.canvas, PAD_COLOR)
    canvas.paste(out, ((plan.canvas[0] - plan.content[0]) // 2, (plan.canvas[1] - plan.content[1]) // 2))
    return canvas
