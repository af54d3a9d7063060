"""PNG charts for reports and the model folder: matplotlib's Agg backend (no display on a worker), one figure at a
time, always closed (pyplot keeps every open figure alive)."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def figure(**subplots: Any) -> Iterator[tuple[Any, Any]]:
    """(figure, axes) from `plt.subplots(**subplots)`, closed on exit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(**subplots)
    try:
        yield fig, ax
    finally:
        plt.close(fig)


def png(fig: Any, dpi: int = 100) -> bytes:
    """The laid-out figure as PNG bytes."""
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()
