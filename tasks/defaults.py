"""What every DAG of this project shares: settings read once at parse time, default_args, tags."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from tasks.settings import load_settings

SETTINGS = load_settings()
TAGS = ["llava", f"backend:{SETTINGS.backend}"]


def default_args(**overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "owner": "ml-platform",
        "retries": 2,
        "retry_delay": timedelta(minutes=1),
        "retry_exponential_backoff": True,
    }
    args.update(overrides)
    return args
