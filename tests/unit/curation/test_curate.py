from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowFailException
from datasets import load_from_disk

from tasks.common.storage import read_json, storage_path
from tasks.curation.curate import REPORT_NAME, CurationOptions, assign_splits, curate
from tasks.model.taxonomy import load_taxonomy
from tasks.model.vision_tokens import PRODUCTION_GEOMETRY, ResizePolicy, image_tokens
from tests.conftest import EXPECTED_IGNORED, EXPECTED_KEPT, encode, hostile_files, pattern, write_tree

DIGITS = load_taxonomy("digits")


def run(raw: Path, out: Path, **opts) -> dict:
    return curate(storage_path(raw.as_uri()), storage_path(out.as_uri()), DIGITS, CurationOptions(**opts))


def test_hostile_drop_accounts_for_every_file(tmp_path: Path) -> None:
    files = hostile_files()
    write_tree(tmp_path / "raw", files)
    report = run(tmp_path / "raw", tmp_path / "ds", test_fraction=0.0, val_fraction=0.0)

    kept = {r["path"] for r in report["kept"]}
    rejected = {r["path"]: r["reason"] for r in report["rejected"]}
    assert report["total"] == len(files)
    assert len(kept) + len(rejected) + len(report["ignored"]) == report["total"]
    # no good image lost; of two identical files the first in path order is kept, the other points at it
    assert kept == EXPECTED_KEPT - {"3/good.png"} | {"3/duplicate-of-good.png"}
    assert set(report["ignored"]) == EXPECTED_IGNORED
    assert all(reason for reason in rejected.values())
    assert "exact duplicate of 3/duplicate-of-good.png" in rejected["3/good.png"]
    assert "label conflict" in rejected["4/conflict-a.png"] and "label conflict" in rejected["5/conflict-b.png"]
    assert "not in taxonomy 'digits'" in rejected["Kitchen/unknown-label.png"]
    assert "not inside a label folder" in rejected["no-label-folder.png"]
    for name, kind in [
        ("empty", "empty file"),
        ("truncated", "truncated"),
        ("not-an-image", "not an image"),
        ("tiny", "too small"),
        ("bomb", "decompression bomb"),
    ]:
        assert kind in rejected[f"3/{name}.png"]
    assert read_json(storage_path((tmp_path / "ds" / REPORT_NAME).as_uri())) == report


def test_labels_csv_layout_with_synonyms_missing_and_unlisted_files(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_tree(
        raw,
        {
            "img/a.png": encode(pattern(seed=1)),
            "img/b.png": encode(pattern(seed=2)),
            "img/unlisted.png": encode(pattern(seed=3)),
        },
    )
    (raw / "labels.csv").write_text("path,label\nimg/a.png,seven\n./img/b.png, 2 \nimg/gone.png,3\n")
    report = run(raw, tmp_path / "ds")
    assert {(r["path"], r["label"]) for r in report["kept"]} == {("img/a.png", "7"), ("img/b.png", "2")}
    reasons = {r["path"]: r["reason"] for r in report["rejected"]}
    assert reasons == {
        "img/unlisted.png": "no label: not listed in labels.csv",
        "img/gone.png": "listed in labels.csv but the file is missing",
    }
    assert report["ignored"] == ["labels.csv"]
    assert report["total"] == 5


def test_labels_csv_needs_its_header(tmp_path: Path) -> None:
    (tmp_path / "labels.csv").write_text("file,class\na.png,1\n")
    with pytest.raises(ValueError, match="path,label"):
        run(tmp_path, tmp_path / "ds")


def test_missing_raw_uri_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run(tmp_path / "nope", tmp_path / "ds")


def _digits_drop(root: Path, per_label: int = 20) -> None:
    write_tree(
        root,
        {f"{d}/img-{i}.png": encode(pattern((16, 16), seed=100 * d + i)) for d in range(10) for i in range(per_label)},
    )


def test_split_is_seeded_stratified_and_independent_of_file_names(tmp_path: Path) -> None:
    _digits_drop(tmp_path / "a")
    first = run(tmp_path / "a", tmp_path / "ds1", test_fraction=0.2, val_fraction=0.1, seed=7)
    again = run(tmp_path / "a", tmp_path / "ds2", test_fraction=0.2, val_fraction=0.1, seed=7)
    assert first["fingerprint"] == again["fingerprint"]
    assert first["kept"] == again["kept"]
    per_label = Counter((r["label"], r["split"]) for r in first["kept"])
    assert all(per_label[(str(d), "test")] == 4 and per_label[(str(d), "validation")] == 2 for d in range(10))

    (tmp_path / "a").rename(tmp_path / "renamed")  # same content under other names → same split
    for f in sorted((tmp_path / "renamed").rglob("*.png")):
        f.rename(f.with_name("x" + f.name))
    renamed = run(tmp_path / "renamed", tmp_path / "ds3", test_fraction=0.2, val_fraction=0.1, seed=7)
    assert renamed["fingerprint"] == first["fingerprint"]
    other_seed = run(tmp_path / "renamed", tmp_path / "ds4", test_fraction=0.2, val_fraction=0.1, seed=8)
    assert other_seed["fingerprint"] != first["fingerprint"]


def test_tiny_classes_keep_a_training_example() -> None:
    rows = [{"label": "1", "sha256": "a"}, {"label": "2", "sha256": "b"}, {"label": "2", "sha256": "c"}]
    splits = assign_splits(rows, CurationOptions(test_fraction=0.5, val_fraction=0.3))
    assert splits["a"] == "train"
    assert sorted(splits[s] for s in "bc") == ["test", "train"]


def test_rows_are_trl_vision_conversations(tmp_path: Path) -> None:
    _digits_drop(tmp_path / "raw", per_label=5)
    report = run(tmp_path / "raw", tmp_path / "ds", test_fraction=0.2, val_fraction=0.2)
    dd = load_from_disk(str(tmp_path / "ds"))
    assert set(dd) == {"train", "validation", "test"}
    assert {k: len(v) for k, v in dd.items()} == report["splits"] == {"train": 30, "validation": 10, "test": 10}
    row = dd["train"][0]
    assert len(row["images"]) == 1 and row["images"][0].mode == "RGB"
    user, assistant = row["messages"]
    assert user["role"] == "user" and assistant["role"] == "assistant"
    assert [part["type"] for part in user["content"]] == ["text", "image"]
    assert "[0,1,2,3,4,5,6,7,8,9]" in user["content"][0]["text"]
    assert assistant["content"] == [{"type": "text", "text": f"this is a photo of {row['label']}."}]


def test_rerun_replaces_the_dataset_whole(tmp_path: Path) -> None:
    _digits_drop(tmp_path / "raw", per_label=3)
    run(tmp_path / "raw", tmp_path / "ds")
    stale = tmp_path / "ds" / "stale-file"
    stale.write_text("left over")
    run(tmp_path / "raw", tmp_path / "ds")
    assert not stale.exists()


@pytest.mark.parametrize(
    ("opts", "message"),
    [({"test_fraction": 0.6, "val_fraction": 0.5}, "leave room"), ({"prompt_template": "no labels"}, "{labels}")],
)
def test_bad_options_are_refused(opts: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CurationOptions(**opts)


def test_empty_splits_are_left_out_and_the_rest_loads(tmp_path: Path) -> None:
    _digits_drop(tmp_path / "raw", per_label=3)
    report = run(tmp_path / "raw", tmp_path / "ds", test_fraction=0.34, val_fraction=0.1)
    assert report["splits"] == {"train": 20, "validation": 0, "test": 10}
    assert {k: len(v) for k, v in load_from_disk(str(tmp_path / "ds")).items()} == {"train": 20, "test": 10}


def test_a_drop_with_nothing_usable_fails_clearly_and_keeps_the_report(tmp_path: Path) -> None:
    write_tree(tmp_path / "raw", {"Kitchen/a.png": encode(pattern(seed=1)), "3/empty.png": b""})
    with pytest.raises(AirflowFailException, match="no usable images") as err:
        run(tmp_path / "raw", tmp_path / "ds")
    assert "not in taxonomy 'digits'" in str(err.value)
    report = read_json(storage_path((tmp_path / "ds" / REPORT_NAME).as_uri()))
    assert report["counts"] == {"kept": 0, "rejected": 2, "ignored": 0}


def test_images_are_stored_as_they_will_be_served(tmp_path: Path) -> None:
    """Train/serve parity: under the production budget a 4:3 photo is letterboxed into one 336 px tile."""
    write_tree(tmp_path / "raw", {"3/photo.jpg": encode(pattern((800, 600), seed=1), "JPEG")})
    policy = ResizePolicy(max_image_tokens=1200, geometry=PRODUCTION_GEOMETRY)
    curate(
        storage_path((tmp_path / "raw").as_uri()),
        storage_path((tmp_path / "ds").as_uri()),
        DIGITS,
        CurationOptions(test_fraction=0, val_fraction=0, resize_policy=policy),
    )
    stored = load_from_disk(str(tmp_path / "ds"))["train"][0]["images"][0]
    assert stored.size == (336, 336)
    assert image_tokens(*stored.size, PRODUCTION_GEOMETRY) <= 1200


def test_links_special_files_and_unsafe_names_are_rejected_rows_never_read(tmp_path: Path) -> None:
    """Issue 9, defects 2-3: nothing outside the drop is read through a link; every entry is accounted for."""
    raw, outside = tmp_path / "raw", tmp_path / "outside"
    write_tree(raw, {"3/good.png": encode(pattern(seed=1)), "4/other.png": encode(pattern(seed=2))})
    write_tree(outside, {"3/a.png": encode(pattern(seed=3)), "b.png": encode(pattern(seed=4))})
    (raw / "3" / "passwd.png").symlink_to("/etc/passwd")
    (raw / "3" / "outside.png").symlink_to(outside / "b.png")
    (raw / "5").symlink_to(outside / "3")  # a symlinked label folder
    os.mkfifo(raw / "3" / "fifo.png")
    with open(os.path.join(os.fsencode(raw / "4"), b"\xff\xfe.png"), "wb") as f:
        f.write(encode(pattern(seed=5)))
    report = run(raw, tmp_path / "ds", test_fraction=0.0, val_fraction=0.0)
    reasons = {r["path"]: r["reason"] for r in report["rejected"]}
    assert report["total"] == 7 and report["counts"] == {"kept": 2, "rejected": 5, "ignored": 0}
    assert {p: reasons[p].split(":")[0] for p in reasons} == {
        "3/passwd.png": "symlink",
        "3/outside.png": "symlink",
        "5": "symlink",
        "3/fifo.png": "special file (FIFO, socket or device)",
        "4/\\xff\\xfe.png": "unsafe file name (not UTF-8 or not printable; raw name hex 342ffffe2e706e67)",
    }
