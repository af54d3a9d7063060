"""Print image tokens per photo for each resize budget (production LLaVA-NeXT geometry), as a Markdown table.

    .venv/bin/python -m bench.vision_tokens

Each cell: image tokens, and the size of the picture the model gets (canvas size if letterboxed, `+pad`).
Pure arithmetic (verified against the real processor in tests/unit/test_vision_tokens.py); runs in well under 1 s.
"""

from __future__ import annotations

from tasks.model.vision_tokens import ResizePlan, ResizePolicy, plan_resize

PHOTO_SIZES = [
    (4032, 3024),  # phone, 4:3 landscape
    (3024, 4032),  # phone, 4:3 portrait
    (1920, 1080),  # 16:9
    (1080, 1920),  # 9:16
    (1600, 1200),
    (1080, 1080),  # square
    (800, 600),
    (550, 412),  # the seed's typical hotel photo
    (640, 480),
    (320, 180),  # thumbnail
]
BUDGETS = [None, 2000, 1600, 1400, 1200]


def _cell(plan: ResizePlan) -> str:
    size = f"{plan.content[0]}×{plan.content[1]}"
    pad = f" in {plan.canvas[0]}×{plan.canvas[1]}" if plan.canvas != plan.content else ""
    return f"{plan.image_tokens:,} ({size}{pad})"


def main() -> None:
    headers = ["photo"] + ["no budget" if b is None else f"≤ {b:,}" for b in BUDGETS]
    print("| " + " | ".join(headers) + " |")
    print("|" + "---|" * len(headers))
    totals = [0] * len(BUDGETS)
    for w, h in PHOTO_SIZES:
        plans = [plan_resize(w, h, ResizePolicy(b)) for b in BUDGETS]
        for i, plan in enumerate(plans):
            totals[i] += plan.image_tokens
        print(f"| {w}×{h} | " + " | ".join(_cell(p) for p in plans) + " |")
    print("| mean tokens | " + " | ".join(f"{t / len(PHOTO_SIZES):,.0f}" for t in totals) + " |")


if __name__ == "__main__":
    main()
