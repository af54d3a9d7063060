"""Digits data and the tiny model in the training script's input format, shared by the tests and bench.

`digits_dataset_dict` builds the format straight with `datasets` (bench); `curated_digits` goes through
tasks/curation/curate.py, so the training tests train on exactly what the pipeline produces.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tasks.model.taxonomy import Taxonomy, load_taxonomy
from tasks.model.tiny_model import build_tiny_llava
from tasks.training.local import tiny_model_corpus

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

    from tasks.curation.reviewed import ReviewedLabels
    from tasks.records.reviews import ReviewSnapshot


def digit_images(count: int | None = None) -> tuple[list, list[str]]:
    """scikit-learn's 8x8 digits as 32x32 RGB PIL images, with their labels "0".."9"."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = digits.images if count is None else digits.images[:count]
    images = [
        Image.fromarray((grid * (255 / 16)).astype(np.uint8), mode="L").resize((32, 32), Image.NEAREST).convert("RGB")
        for grid in pixels
    ]
    return images, [str(target) for target in digits.target[: len(images)]]


def conversation(taxonomy: Taxonomy, label: str) -> list[dict]:
    return [
        {"role": "user", "content": [{"type": "text", "text": taxonomy.prompt()}, {"type": "image"}]},
        {"role": "assistant", "content": [{"type": "text", "text": taxonomy.answer(label)}]},
    ]


def digits_dataset_dict(out_dir: Path, *, count: int | None = None, test_fraction: float = 0.2, seed: int = 0) -> Path:
    """Save a stratified train/validation/test DatasetDict of digits in the training script's format."""
    from datasets import Dataset, DatasetDict, Features, Image, List, Value
    from sklearn.model_selection import train_test_split

    taxonomy = load_taxonomy("digits")
    images, labels = digit_images(count)
    rows = [
        {
            "images": [image],
            "messages": conversation(taxonomy, label),
            "label": label,
            "sha256": hashlib.sha256(image.tobytes()).hexdigest(),
        }
        for image, label in zip(images, labels, strict=True)
    ]
    train_rows, test_rows = train_test_split(rows, test_size=test_fraction, stratify=labels, random_state=seed)
    train_rows, validation_rows = train_test_split(train_rows, test_size=0.1, random_state=seed)
    part = {"type": Value("string"), "text": Value("string")}
    features = Features(
        {
            "images": List(Image()),
            "messages": List({"role": Value("string"), "content": List(part)}),
            "label": Value("string"),
            "sha256": Value("string"),
        }
    )
    splits = {"train": train_rows, "validation": validation_rows, "test": test_rows}
    DatasetDict({name: Dataset.from_list(rows, features=features) for name, rows in splits.items()}).save_to_disk(
        str(out_dir)
    )
    return out_dir


def digits_corpus() -> list[str]:
    """Every text the tiny model must be able to tokenise for the digits task."""
    return tiny_model_corpus("digits", load_taxonomy("digits").prompt())


def tiny_digits_model(out_dir: Path) -> Path:
    return build_tiny_llava(out_dir, digits_corpus(), seed=0)


def curated_digits(dataset: Path, count: int, reviews: ReviewedLabels | None = None) -> Path:
    """The first `count` digits as a raw drop, curated by tasks/curation/curate.py into `dataset` (with `reviews`
    folded in): exactly what finetune_llava trains on. Curated with the local backend's resize policy (the tiny
    model's vision geometry), as curate_dataset does there.
    """
    from tasks.common.storage import storage_path
    from tasks.curation.curate import CurationOptions, curate
    from tasks.model.demo_data import write_labelled
    from tasks.model.vision_tokens import DEFAULT_MAX_IMAGE_TOKENS, TINY_GEOMETRY, ResizePolicy

    policy = ResizePolicy(DEFAULT_MAX_IMAGE_TOKENS, TINY_GEOMETRY)
    with tempfile.TemporaryDirectory(prefix="raw-digits-") as raw_dir:
        raw = storage_path(Path(raw_dir).as_uri())
        write_labelled(raw, range(count))
        opts = CurationOptions(resize_policy=policy)
        curate(raw, storage_path(dataset.as_uri()), load_taxonomy("digits"), opts, reviews)
    return dataset


def relabel_training_digit(root: ObjectStoragePath, index: int, label: str, reviewer: str) -> ReviewSnapshot:
    """A reviewer relabels demo digit `index` of a training drop, as if curation had flagged it as a likely
    mislabel, and the reviewed labels are published: the snapshot curation folds in."""
    from tasks.model.demo_data import digits
    from tasks.model.images import content_hash, encode_png, load_image
    from tasks.review import decisions, publish
    from tasks.review.queue import QueueItem

    digit = next(digits([index]))
    pixels = content_hash(load_image(encode_png(digit.image)))  # as curation hashes the drop's file
    flag = QueueItem(None, f"{digit.label}/digit-{index:04d}.png", pixels, "v0", label, 0.9, None, "mislabel_flag", "")
    decisions.record(root, flag, label, reviewer=reviewer, taxonomy=load_taxonomy("digits"))
    snapshot = publish.publish(root, min_new=1).snapshot
    assert snapshot is not None, "nothing new to publish"
    return snapshot
