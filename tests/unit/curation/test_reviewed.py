"""Reviewed labels folded into curation: a reviewer's label wins, reviewed production images join the dataset, and
every label's source is kept — through the report, the DatasetRelease and the training plan to the registry."""

from __future__ import annotations

import hashlib

import pytest
from datasets import load_from_disk

from tasks.common import storage
from tasks.common.settings import load_settings
from tasks.curation import reviewed
from tasks.curation.curate import CurationOptions, curate, curate_uri
from tasks.model.demo_data import digits, write_incoming, write_labelled
from tasks.model.taxonomy import load_taxonomy
from tasks.model.vision_tokens import TINY_GEOMETRY, ResizePolicy
from tasks.records.reviews import FoldedReviews
from tasks.review import decisions, publish
from tasks.review.queue import QueueItem
from tasks.training.plan import find_dataset, plan_training
from tasks.training.registry import candidate
from tasks.training.steps import training_backend
from tests.unit.training.test_plan import PARAMS, RUN_AFTER

DIGITS = load_taxonomy("digits")
DAY = "2026-11-05"
DROP = range(0, 40)
PRODUCTION = [1500, 1501, 1502, 1503]  # digits the drop does not hold
OPTS = CurationOptions(test_fraction=0.2, val_fraction=0.1, resize_policy=ResizePolicy(None, TINY_GEOMETRY))


def production_item(root, index: int, predicted: str) -> QueueItem:
    data = (root / "incoming" / f"dt={DAY}" / f"digit-{index:04d}.png").read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    return QueueItem(DAY, f"digit-{index:04d}.png", sha, "v1", predicted, 0.41, "9", "low_confidence", "t")


def true_label(index: int) -> str:
    return next(digits([index])).label


@pytest.fixture
def settings(tmp_path):
    return load_settings({"PIPELINE_BACKEND": "local", "PIPELINE_STORAGE_URI": tmp_path.as_uri()})


@pytest.fixture
def root(settings):
    root = storage.root(settings)
    write_labelled(root / "raw", DROP)
    write_incoming(root / "incoming", [DAY], PRODUCTION)
    return root


def review(root) -> tuple[str, str]:
    """A reviewer corrects one production image, confirms another, and relabels a flagged training image; a third
    production image is replaced after review. Returns (the flagged image's pixel hash, its drop label)."""
    before = curate(root / "raw", root / "datasets" / "before", DIGITS, OPTS)
    flagged = before["kept"][0]
    wrong = "0" if true_label(PRODUCTION[0]) != "0" else "1"
    for index, predicted in [(PRODUCTION[0], wrong), (PRODUCTION[1], true_label(PRODUCTION[1]))]:
        item = production_item(root, index, predicted)
        decisions.record(root, item, true_label(index), reviewer="ana", taxonomy=DIGITS)
    changed = production_item(root, PRODUCTION[2], "7")
    decisions.record(root, changed, "7", reviewer="ana", taxonomy=DIGITS)
    (root / "incoming" / f"dt={DAY}" / changed.key).write_bytes(b"replaced after review")
    relabel = "9" if flagged["label"] != "9" else "8"
    flag = QueueItem(None, flagged["path"], flagged["sha256"], "v1", relabel, 0.7, None, "mislabel_flag", "t")
    decisions.record(root, flag, relabel, reviewer="bo", taxonomy=DIGITS)
    publish.publish(root, min_new=1)
    return flagged["sha256"], flagged["label"]


def test_reviewed_labels_win_and_their_source_is_kept(root) -> None:
    flagged_sha, drop_label = review(root)
    report = curate(root / "raw", root / "datasets" / "after", DIGITS, OPTS, reviewed.load(root))

    kept = {row["sha256"]: row for row in report["kept"]}
    relabelled = kept[flagged_sha]
    assert relabelled["label"] != drop_label and relabelled["drop_label"] == drop_label
    assert relabelled["label_source"] == "review"
    added = {row["path"]: row for row in report["kept"] if row["path"].startswith(reviewed.REVIEWED_PREFIX)}
    assert {path: row["label"] for path, row in added.items()} == {
        f"reviewed://dt={DAY}/digit-{index:04d}.png": true_label(index) for index in PRODUCTION[:2]
    }
    rejected = {row["path"]: row["reason"] for row in report["rejected"]}
    assert "changed since review" in rejected[f"reviewed://dt={DAY}/digit-{PRODUCTION[2]:04d}.png"]
    assert report["label_sources"] == {"drop": len(DROP) - 1, "review": 3}
    assert {k: report["reviews"][k] for k in ("used", "relabelled", "added", "labels", "unmatched")} == {
        "used": 3,
        "relabelled": 1,
        "added": 2,
        "labels": 4,
        "unmatched": 0,
    }
    dataset = load_from_disk(str(root / "datasets" / "after"))
    rows = {row["sha256"]: row for split in dataset.values() for row in split}
    assert rows[flagged_sha]["label"] == relabelled["label"]  # what the model is trained on
    assert rows[flagged_sha]["messages"][1]["content"][0]["text"] == DIGITS.answer(relabelled["label"])
    assert report["fingerprint"] != curate(root / "raw", root / "datasets" / "plain", DIGITS, OPTS)["fingerprint"]


def test_a_drop_curated_without_reviews_says_so(root) -> None:
    report = curate(root / "raw", root / "datasets" / "plain", DIGITS, OPTS, reviewed.load(root))
    assert report["reviews"] is None and report["label_sources"] == {"drop": len(DROP)}


def test_an_unsafe_key_in_a_snapshot_is_rejected_unread(root) -> None:
    item = QueueItem(DAY, "../../raw/0/digit-0000.png", "0" * 64, "v1", "0", 0.4, None, "golden_sample", "t")
    decisions.record(root, item, "0", reviewer="ana", taxonomy=DIGITS)
    publish.publish(root, min_new=1)
    report = curate(root / "raw", root / "datasets" / "after", DIGITS, OPTS, reviewed.load(root))
    rejected = {row["path"]: row["reason"] for row in report["rejected"]}
    assert "unsafe key" in rejected[f"reviewed://dt={DAY}/{'0' * 64}"]


def test_the_registry_names_the_reviews_a_version_was_trained_on(root, settings) -> None:
    review(root)
    snapshot = publish.latest_snapshot(root)
    dataset_uri = f"{settings.storage_uri}/datasets/digits-reviewed"
    loaded = reviewed.load(root)
    curate_uri(f"{settings.storage_uri}/raw", dataset_uri, DIGITS, OPTS, settings=settings, reviews=loaded)
    release = find_dataset(dataset_uri, [], settings)
    plan = plan_training(
        training_backend(settings), settings, PARAMS, release, dag_id="finetune_llava", run_key="r", run_time=RUN_AFTER
    )
    entry = candidate(plan, {"accuracy": 1.0}, storage_uri=settings.storage_uri)
    assert entry.reviews == FoldedReviews(snapshot.snapshot, snapshot.digest, used=3, relabelled=1, added=2)
    assert type(entry).from_dict(entry.version, entry.to_dict(), "registry").reviews == entry.reviews
