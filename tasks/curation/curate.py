"""Labelled raw images → a validated HF DatasetDict in TRL's vision conversational format, plus a report.

Every input file ends in exactly one place — kept, rejected (with a reason) or ignored — and the report says which.
Images stream through `Dataset.from_generator` (Arrow on disk), so memory holds metadata, not pixels.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import random
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow.sdk import ObjectStoragePath
from airflow.sdk.exceptions import AirflowFailException

from tasks.common import storage
from tasks.common.progress import Progress
from tasks.common.settings import Settings
from tasks.curation.near_duplicates import (
    NearDuplicatePolicy,
    RowGroups,
    group_rows,
    leakage_report,
    phash,
    taxonomy_policy,
)
from tasks.curation.reviewed import Fold, ReviewedLabels
from tasks.model.images import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MIN_SIDE,
    MAX_FILE_BYTES,
    ImageRejected,
    content_hash,
    is_ignored,
    load_image,
)
from tasks.model.taxonomy import DEFAULT_PROMPT_TEMPLATE, Taxonomy
from tasks.model.vision_tokens import DEFAULT_POLICY, ResizePolicy, prepare_image
from tasks.records.base import SCHEMA_VERSION

if TYPE_CHECKING:
    from datasets import Dataset, Features

log = logging.getLogger(__name__)

LABELS_CSV = "labels.csv"
REPORT_NAME = storage.CURATION_REPORT
SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class CurationOptions:
    test_fraction: float = 0.2
    val_fraction: float = 0.1
    seed: int = 42
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    min_side: int = DEFAULT_MIN_SIDE
    max_pixels: int = DEFAULT_MAX_PIXELS
    # Images are stored exactly as the endpoint client will send them (same token budget and geometry), so the
    # model is fine-tuned on the pictures it will be asked about.
    resize_policy: ResizePolicy = DEFAULT_POLICY
    near_duplicates: NearDuplicatePolicy | None = None  # None: the taxonomy file's declared threshold

    def __post_init__(self) -> None:
        if not (0 <= self.test_fraction < 1 and 0 <= self.val_fraction < 1):
            raise ValueError("test_fraction and val_fraction must be in [0, 1)")
        if self.test_fraction + self.val_fraction >= 1:
            raise ValueError("test_fraction + val_fraction must leave room for training data")
        if "{labels}" not in self.prompt_template:
            raise ValueError("prompt_template must contain {labels}, where the taxonomy's labels are listed")


@dataclass
class _Ledger:
    """Where every input went. Kept rows are final only after conflicts are resolved."""

    total: int = 0
    kept: dict[str, dict[str, str]] = field(default_factory=dict)  # sha256 -> first {path, label, sha256}
    labels_by_sha: dict[str, dict[str, str]] = field(default_factory=lambda: defaultdict(dict))  # sha->label->path
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (path, sha256)
    rejected: list[dict[str, str]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    def conflicts(self) -> dict[str, dict[str, str]]:
        return {sha: labels for sha, labels in self.labels_by_sha.items() if len(labels) > 1}


class NoUsableImages(AirflowFailException, ValueError):
    """The drop holds nothing to train on: retrying the task cannot change that."""


def discover(raw: ObjectStoragePath) -> Iterator[tuple[str, str | None, ObjectStoragePath | None, str | None]]:
    """Yield (relative path, raw label or None, file or None, problem or None) in a stable order.

    Layouts: `labels.csv` (`path,label`) at the root, else one folder per label. A None label means unlabelled;
    a None file means listed in labels.csv but missing. A problem (symlink, special file, unsafe name; see
    tasks.common.storage.iter_files) means the entry is rejected without being read.
    """
    if not raw.exists():
        raise FileNotFoundError(f"raw_uri {raw} does not exist")
    entries = {entry.key: entry.problem for entry in storage.iter_files(raw)}
    csv_path = raw / LABELS_CSV
    if LABELS_CSV in entries and entries[LABELS_CSV] is None:
        labels = _read_labels_csv(csv_path)
        for rel in sorted(entries):
            yield rel, (None if rel == LABELS_CSV else labels.pop(rel, None)), raw / rel, entries[rel]
        for rel in sorted(labels):
            yield rel, labels[rel], None, None
    else:
        for rel in sorted(entries):
            parts = rel.split("/")
            yield rel, (parts[0] if len(parts) > 1 else None), raw / rel, entries[rel]


def _read_labels_csv(path: ObjectStoragePath) -> dict[str, str]:
    reader = csv.DictReader(io.StringIO(path.read_text(encoding="utf-8-sig")))
    if not reader.fieldnames or not {"path", "label"} <= set(reader.fieldnames):
        raise ValueError(f"{path} must have a header with columns path,label; got {reader.fieldnames}")
    return {row["path"].strip().lstrip("./"): row["label"] for row in reader if row.get("path")}


def _scan(
    raw: ObjectStoragePath,
    items: list[tuple[str, str | None, ObjectStoragePath | None, str | None]],
    taxonomy: Taxonomy,
    opts: CurationOptions,
    ledger: _Ledger,
    fold: Fold,
) -> Iterator[dict]:
    """Decode and classify every input; yield each first-seen, labelled, valid image as a row (its label the
    reviewed one where `fold` has a review of it)."""
    progress = Progress(len(items), "curation scan", log=log)
    for rel, raw_label, file, problem in items:
        ledger.total += 1
        progress.advance()
        if is_ignored(rel) or (rel == LABELS_CSV and problem is None):
            ledger.ignored.append(rel)
            continue
        if problem:
            ledger.rejected.append({"path": rel, "reason": problem})
            continue
        if file is None:
            ledger.rejected.append({"path": rel, "reason": "listed in labels.csv but the file is missing"})
            continue
        if raw_label is None:
            where = "not listed in labels.csv" if (raw / LABELS_CSV).exists() else "not inside a label folder"
            ledger.rejected.append({"path": rel, "reason": f"no label: {where}"})
            continue
        label = taxonomy.match(raw_label)
        if label is None:
            ledger.rejected.append({"path": rel, "reason": f"label {raw_label!r} is not in taxonomy {taxonomy.name!r}"})
            continue
        try:
            data = storage.read_bytes_capped(file, MAX_FILE_BYTES)
            if changed := fold.changed(rel, data):
                raise ImageRejected(changed)
            image = load_image(data, min_side=opts.min_side, max_pixels=opts.max_pixels)
        except (ImageRejected, storage.Refused) as exc:
            ledger.rejected.append({"path": rel, "reason": str(exc)})
            continue
        sha = content_hash(image)
        labelled = fold.label(rel, sha, label)
        ledger.labels_by_sha[sha].setdefault(labelled["label"], rel)
        if sha in ledger.kept:
            ledger.duplicates.append((rel, sha))
            continue
        ledger.kept[sha] = {"path": rel, **labelled, "sha256": sha, "phash": f"{phash(image):016x}"}
        image = prepare_image(image, opts.resize_policy)
        yield {"image": image, "sha256": sha}
    progress.finish()


def _resolve_near_duplicates(near: RowGroups, ledger: _Ledger, policy: NearDuplicatePolicy) -> None:
    """Mark each group's rows with the group key (its centre's sha256) for the split; a group whose members carry
    different labels is a label conflict, rejected whole as exact conflicts are."""
    for members in near.groups():
        labels = {row["label"] for row, _ in members}
        if len(labels) == 1:
            for row, _ in members:
                row["group"] = members[0][0]["sha256"]
            continue
        detail = ", ".join(f"{row['label']!r} ({row['path']}, {d} bits)" for row, d in members)
        reason = f"label conflict: near-duplicates (pHash within {policy.max_distance} bits) labelled {detail}"
        for row, _ in members:
            ledger.rejected.append({"path": ledger.kept.pop(row["sha256"])["path"], "reason": reason})


def _to_arrow(rows: Iterator[dict[str, Any]], features: Features, path: str) -> Dataset:
    """Stream rows into an Arrow file on disk and memory-map it back: pixels never pile up in memory."""
    from datasets import Dataset
    from datasets.arrow_writer import ArrowWriter

    with ArrowWriter(features=features, path=path) as writer:
        for row in rows:
            writer.write(features.encode_example(row))
        writer.finalize()
    return Dataset.from_file(path)


def assign_splits(rows: list[dict[str, str]], opts: CurationOptions) -> dict[str, str]:
    """Seeded, stratified split: sha256 → split. Independent of listing order; small classes favour train.

    Rows sharing a `group` (near-duplicates) go to one split together: a group joins test or validation only while
    it fits the count left there, so no copy of a test image is trained on and the fractions hold.
    """
    by_label: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        by_label[row["label"]][row.get("group", row["sha256"])].append(row["sha256"])
    assignment: dict[str, str] = {}
    for label, groups in sorted(by_label.items()):
        keys = sorted(groups)
        random.Random(f"{opts.seed}:{label}").shuffle(keys)
        size = sum(len(shas) for shas in groups.values())
        n_test = round(size * opts.test_fraction)
        n_val = round(size * opts.val_fraction)
        if n_test + n_val >= size:  # keep at least one training example per label
            n_test, n_val = min(n_test, size - 1), 0
        room = {"test": n_test, "validation": n_val}
        for key in keys:
            split = next((s for s, left in room.items() if len(groups[key]) <= left), "train")
            if split in room:
                room[split] -= len(groups[key])
            assignment |= dict.fromkeys(groups[key], split)
    return assignment


def conversation(prompt: str, answer: str) -> list[dict[str, Any]]:
    """TRL's vision conversational format: user (text + image) → assistant answer."""
    return [
        {"role": "user", "content": [{"type": "text", "text": prompt}, {"type": "image", "text": None}]},
        {"role": "assistant", "content": [{"type": "text", "text": answer}]},
    ]


def fingerprint(kept: list[dict[str, str]], prompt: str, opts: CurationOptions) -> str:
    """Content fingerprint: same images, labels, split and prompt → same value, whatever the file names."""
    digest = hashlib.sha256(f"{prompt}\n{opts.seed}\n".encode())
    for row in sorted(kept, key=lambda r: r["sha256"]):
        digest.update(f"{row['sha256']}:{row['label']}:{row['split']}\n".encode())
    return digest.hexdigest()


def curate(
    raw: ObjectStoragePath,
    dataset: ObjectStoragePath,
    taxonomy: Taxonomy,
    opts: CurationOptions,
    reviews: ReviewedLabels | None = None,
) -> dict[str, Any]:
    """Curate `raw`, with the `reviews` folded in (tasks.curation.reviewed), into a DatasetDict at `dataset`; return
    the report (also written as curation_report.json).

    The report is written last: its presence marks a complete dataset. A rerun replaces the whole directory.
    """
    from datasets import DatasetDict, Features, Image, List, Value

    prompt = taxonomy.prompt(opts.prompt_template)
    fold = Fold(reviews)
    items = fold.items() + list(discover(raw))  # keys only; listing errors surface here, not inside a generator
    ledger = _Ledger()
    features = Features({"image": Image(), "sha256": Value("string")})
    with tempfile.TemporaryDirectory(prefix="curation-") as cache_dir:
        scanned = _to_arrow(_scan(raw, items, taxonomy, opts, ledger, fold), features, f"{cache_dir}/scan.arrow")
        conflicts = ledger.conflicts()
        for sha, labels in conflicts.items():
            detail = ", ".join(f"{label!r} ({path})" for label, path in sorted(labels.items()))
            reason = f"label conflict: the same image is labelled {detail}"
            ledger.rejected.append({"path": ledger.kept.pop(sha)["path"], "reason": reason})
        for path, sha in ledger.duplicates:
            if sha in conflicts:
                ledger.rejected.append({"path": path, "reason": "label conflict: see the other copies"})
            else:
                reason = f"exact duplicate of {ledger.kept[sha]['path']} (same decoded pixels)"
                ledger.rejected.append({"path": path, "reason": reason})

        policy = opts.near_duplicates or taxonomy_policy(taxonomy.name)
        near = group_rows(list(ledger.kept.values()), policy)
        _resolve_near_duplicates(near, ledger, policy)
        kept = sorted(ledger.kept.values(), key=lambda r: r["path"])
        split_of = assign_splits(kept, opts)
        for row in kept:
            row["split"] = split_of[row["sha256"]]
        leakage = leakage_report(near, policy)
        if leakage["groups_across_splits"]:  # the split's own invariant: must never pass silently
            raise RuntimeError(f"{leakage['groups_across_splits']} near-duplicate groups span several splits")
        index_of = {sha: i for i, sha in enumerate(scanned["sha256"])}
        out_features = Features(
            {
                "images": List(Image()),
                "messages": List(
                    {
                        "role": Value("string"),
                        "content": List({"type": Value("string"), "text": Value("string")}),
                    }
                ),
                "label": Value("string"),
                "sha256": Value("string"),
            }
        )

        def split_rows(split: str) -> Iterator[dict[str, Any]]:
            for row in sorted(kept, key=lambda r: r["sha256"]):
                if row["split"] == split:
                    image = scanned[index_of[row["sha256"]]]["image"]
                    yield {
                        "images": [image],
                        "messages": conversation(prompt, taxonomy.answer(row["label"])),
                        "label": row["label"],
                        "sha256": row["sha256"],
                    }

        # An empty split is left out (datasets cannot save and reload one); the report still counts it as 0.
        present = [split for split in SPLITS if any(row["split"] == split for row in kept)]
        report = _report(ledger, kept, taxonomy, prompt, opts) | {"near_duplicates": leakage}
        report["reviews"] = fold.report(kept)
        storage.remove_tree(dataset, owner=dataset.parent)
        if not kept:
            storage.write_json(dataset / REPORT_NAME, report)
            raise NoUsableImages(f"no usable images in {raw}; nothing to train on.\n{summary(report)}")
        splits = DatasetDict(
            {split: _to_arrow(split_rows(split), out_features, f"{cache_dir}/{split}.arrow") for split in present}
        )
        splits.save_to_disk(storage.plain_uri(dataset), storage_options=storage.fsspec_options(dataset) or None)
    storage.write_json(dataset / REPORT_NAME, report)
    log.info(summary(report))
    return report


def _report(
    ledger: _Ledger, kept: list[dict[str, str]], taxonomy: Taxonomy, prompt: str, opts: CurationOptions
) -> dict[str, Any]:
    per_label: dict[str, Counter] = defaultdict(Counter)
    for row in kept:
        per_label[row["label"]][row["split"]] += 1
    report = {  # its top-level facts are the dataset's release (tasks.records.dataset.DatasetRelease)
        "schema_version": SCHEMA_VERSION,
        "taxonomy": taxonomy.name,
        "prompt": prompt,
        "options": {
            **{k: getattr(opts, k) for k in ("test_fraction", "val_fraction", "seed", "min_side", "max_pixels")},
            "max_image_tokens": opts.resize_policy.max_image_tokens,
            "vision_tile_size": opts.resize_policy.geometry.tile_size,
        },
        "total": ledger.total,
        "counts": {"kept": len(kept), "rejected": len(ledger.rejected), "ignored": len(ledger.ignored)},
        "splits": {split: sum(c[split] for c in per_label.values()) for split in SPLITS},
        "per_label": {label: dict(per_label[label]) for label in taxonomy.labels if label in per_label},
        "label_sources": dict(Counter(row["label_source"] for row in kept)),
        "rejection_reasons": dict(Counter(r["reason"].split(":")[0] for r in ledger.rejected).most_common()),
        "fingerprint": fingerprint(kept, prompt, opts),
        "kept": kept,
        "rejected": sorted(ledger.rejected, key=lambda r: r["path"]),
        "ignored": ledger.ignored,
    }
    accounted = len(kept) + len(ledger.rejected) + len(ledger.ignored)
    if accounted != ledger.total:  # an accounting bug must never pass silently
        raise RuntimeError(f"curation lost track of inputs: {accounted} accounted for, {ledger.total} seen")
    return report


def summary(report: dict[str, Any]) -> str:
    """The readable version of the report for the task log."""
    c = report["counts"]
    lines = [
        f"Curated {report['total']} files with taxonomy {report['taxonomy']!r}: "
        f"{c['kept']} kept, {c['rejected']} rejected, {c['ignored']} ignored.",
        "Splits: " + ", ".join(f"{k}={v}" for k, v in report["splits"].items()),
        f"Fingerprint: {report['fingerprint']}",
        "Per label (train/validation/test):",
    ]
    if near := report.get("near_duplicates"):  # reports written before near-duplicate grouping have none
        lines.insert(
            3,
            f"Near-duplicates (pHash within {near['policy']['max_distance']} bits): groups by size "
            f"{near['group_sizes']}, {len(near['cut_by_size_cap'])} cut by the size cap, "
            f"{near['groups_across_splits']} groups across splits, {near['pairs_across_splits']} close "
            "pairs across splits.",
        )
    if reviews := report.get("reviews"):
        lines.insert(
            -1,
            f"Reviewed labels from {reviews['snapshot']}: {reviews['used']} used ({reviews['relabelled']} relabelled, "
            f"{reviews['added']} reviewed production images added), {reviews['unmatched']} flagged images not in "
            "this drop.",
        )
    for label, counts in report["per_label"].items():
        lines.append(f"  {label:<40} " + "/".join(str(counts.get(s, 0)) for s in SPLITS))
    if report["rejection_reasons"]:
        lines.append("Rejections by reason:")
        lines += [f"  {n:>6}  {reason}" for reason, n in report["rejection_reasons"].items()]
        lines += [f"  e.g. {r['path']}: {r['reason']}" for r in report["rejected"][:5]]
    return "\n".join(lines)


def curate_uri(
    raw_uri: str,
    dataset_uri: str,
    taxonomy: Taxonomy,
    opts: CurationOptions,
    *,
    settings: Settings,
    reviews: ReviewedLabels | None = None,
) -> dict[str, Any]:
    """`curate` on URIs from params; returns what downstream tasks need (small enough for XCom and Asset extras).

    `raw_uri` must lie inside the storage root or an input root, `dataset_uri` below `<root>/datasets/`: checked
    before anything is listed or deleted (tasks.common.storage.contained)."""
    raw = storage.contained(raw_uri, settings, param="raw_uri")
    dataset = storage.owned_output(dataset_uri, settings, param="dataset_uri", prefix=storage.DATASETS)
    report = curate(raw, dataset, taxonomy, opts, reviews)
    return {
        "dataset_uri": storage.plain_uri(dataset),
        "report_uri": str(dataset / REPORT_NAME),
        "taxonomy": taxonomy.name,
        "fingerprint": report["fingerprint"],
        "counts": report["counts"],
        "splits": report["splits"],
        "reviews": report["reviews"],
    }
