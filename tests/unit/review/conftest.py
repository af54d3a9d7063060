"""A storage root and committed-looking prediction rows for the review tests."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from tasks.common.storage import storage_path
from tasks.model.taxonomy import load_taxonomy


@pytest.fixture
def root(tmp_path: Path):
    return storage_path(f"file://{tmp_path}")


@pytest.fixture
def digits():
    return load_taxonomy("digits")


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def row(key: str, label: str = "3", confidence: float | None = 0.9, status: str = "ok", **extra: Any) -> dict:
    """A committed row with the fields the queue reads; its content hash is that of its key."""
    return {
        "key": key,
        "content_sha256": sha(key),
        "status": status,
        "label": label if status == "ok" else None,
        "confidence": confidence if status == "ok" else None,
        "runner_up": "8" if status == "ok" else None,
        "model_version": "v1",
        **extra,
    }
