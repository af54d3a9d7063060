"""Near-duplicate search and grouping, and the hidden-leak drop: real photos with resized, re-compressed and
brightened copies (scikit-image's bundled samples)."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image, ImageEnhance

from tasks.common.storage import storage_path
from tasks.curation.curate import CurationOptions, assign_splits, curate
from tasks.curation.near_duplicates import NearDuplicatePolicy, near_pairs, phash, star_groups, taxonomy_policy
from tasks.model.demo_data import digits
from tasks.model.taxonomy import load_taxonomy
from tests.conftest import encode, write_tree

PHOTOS = {  # label -> scikit-image sample photos (chelsea is also bundled as "cat": only one of them)
    "Room": ["astronaut", "camera", "chelsea", "coffee", "coins"],
    "Pool": ["grass", "gravel", "hubble_deep_field", "immunohistochemistry", "moon"],
    "Lobby": ["page", "retina", "rocket", "text", "brick"],
}


def _jpeg(image: Image.Image, quality: int) -> bytes:
    return encode(image, "JPEG", quality=quality)


def copies(image: Image.Image) -> dict[str, bytes]:
    """The ways a hotel photo is re-uploaded: resized, re-compressed, both, brightened."""
    half = image.resize((image.width // 2, image.height // 2))
    three_quarters = image.resize((image.width * 3 // 4, image.height * 3 // 4))
    return {
        "original.png": encode(image),
        "half.png": encode(half),
        "q60.jpg": _jpeg(image, 60),
        "resized_q70.jpg": _jpeg(Image.open(io.BytesIO(_jpeg(three_quarters, 70))), 70),
        "bright.png": encode(ImageEnhance.Brightness(image).enhance(1.2)),
    }


def brute_force(hashes: np.ndarray, max_distance: int) -> set[tuple[int, int, int]]:
    distance = np.bitwise_count(hashes[:, None] ^ hashes[None, :])
    i, j = np.triu_indices(len(hashes), 1)
    close = distance[i, j] <= max_distance
    return set(zip(i[close].tolist(), j[close].tolist(), distance[i, j][close].tolist(), strict=True))


@pytest.mark.parametrize("max_distance", [0, 3, 6, 9])
def test_band_search_finds_exactly_the_pairs_brute_force_finds(max_distance: int) -> None:
    rng = np.random.default_rng(max_distance)
    base = rng.integers(0, 2**63, 3000, dtype=np.uint64)
    flips = rng.integers(0, 64, (3000, 12))
    near = base.copy()
    for k, row in enumerate(flips):  # copies 0..11 bits away from their original
        for bit in row[: k % 12]:
            near[k] ^= np.uint64(1) << np.uint64(bit)
    hashes = np.concatenate([base, near])
    found = set(zip(*(a.tolist() for a in near_pairs(hashes, max_distance)), strict=True))
    assert found == brute_force(hashes, max_distance)
    assert len(found) >= 3000 * (min(max_distance, 11) + 1) // 12


def test_star_groups_do_not_chain_and_report_what_the_cap_cut() -> None:
    # a chain 0-1-2-3, each link 2 bits: at 2 bits a chain would merge 0 and 3 (6 bits apart)
    chain = np.array([0b0, 0b11, 0b1111, 0b111111], dtype=np.uint64)
    grouping = star_groups(4, *near_pairs(chain, 2), max_size=10)
    assert grouping.groups == [[(1, 0), (0, 2), (2, 2)]] and grouping.cut == []  # 3 is alone: 4 bits from 1
    star = np.array([0, 1, 2, 4, 8, 16], dtype=np.uint64)  # 0 has five copies one bit away
    capped = star_groups(6, *near_pairs(star, 1), max_size=3)
    assert capped.groups == [[(0, 0), (1, 1), (2, 1)]]
    assert capped.cut == [(0, 3, 1), (0, 4, 1), (0, 5, 1)]


def test_taxonomies_declare_their_threshold() -> None:
    assert taxonomy_policy("digits") == NearDuplicatePolicy(max_distance=2, max_group_size=10)
    assert taxonomy_policy("hotel").max_distance == 6
    with pytest.raises(ValueError, match="max_group_size"):
        NearDuplicatePolicy(max_distance=2, max_group_size=1)


def test_demo_digits_do_not_over_merge() -> None:
    """All 1,797 digits at the digits threshold: a few pairs, no chains (at 6 bits a star of 15 forms)."""
    images = list(digits())
    hashes = np.array([phash(d.image) for d in images], dtype=np.uint64)
    policy = taxonomy_policy("digits")
    grouping = star_groups(len(hashes), *near_pairs(hashes, policy.max_distance), policy.max_group_size)
    assert Counter(len(members) for members in grouping.groups) == {2: 9}
    assert all(len({images[i].label for i, _ in members}) == 1 for members in grouping.groups)


def test_hidden_leak_old_split_leaks_copies_new_split_keeps_groups_whole(tmp_path: Path) -> None:
    files = {}
    for label, names in PHOTOS.items():
        for name in names:
            photo = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
            files |= {f"{label}/{name}-{copy}": data for copy, data in copies(photo).items()}
    write_tree(tmp_path / "raw", files)
    report = curate(
        storage_path((tmp_path / "raw").as_uri()),
        storage_path((tmp_path / "ds").as_uri()),
        load_taxonomy("hotel"),
        CurationOptions(seed=3),
    )

    assert report["counts"]["kept"] == len(files) == 75
    photo_of = {row["path"]: row["path"].split("/")[1].rsplit("-", 1)[0] for row in report["kept"]}
    near = report["near_duplicates"]
    assert near["group_sizes"] == {"5": 15} and near["cut_by_size_cap"] == []
    assert all(len({photo_of[m["path"]] for m in group["members"]}) == 1 for group in near["groups"])
    assert near["groups_across_splits"] == 0 and near["pairs_across_splits"] == 0
    assert max(m["distance"] for group in near["groups"] for m in group["members"]) <= 6

    def splits_per_photo(split_of: dict[str, str]) -> Counter:
        return Counter(
            len({split_of[row["sha256"]] for row in report["kept"] if photo_of[row["path"]] == photo})
            for photo in set(photo_of.values())
        )

    old = assign_splits([{k: row[k] for k in ("label", "sha256")} for row in report["kept"]], CurationOptions(seed=3))
    assert sum(n for splits, n in splits_per_photo(old).items() if splits > 1) >= 10  # copies on both sides
    new = {row["sha256"]: row["split"] for row in report["kept"]}
    assert splits_per_photo(new) == {1: 15}
    # whole groups: test takes one photo of five per label (20%); validation's 2 images per label fit no group
    assert Counter(new.values()) == {"train": 60, "test": 15}


def test_a_near_duplicate_group_with_two_labels_is_a_conflict(tmp_path: Path) -> None:
    photo = Image.fromarray(skimage.data.camera()).convert("RGB")
    write_tree(
        tmp_path / "raw",
        {
            "Room/a.png": encode(photo),
            "Lobby/b.jpg": _jpeg(photo, 60),
            "Room/other.png": encode(Image.fromarray(skimage.data.coffee())),
        },
    )
    report = curate(
        storage_path((tmp_path / "raw").as_uri()),
        storage_path((tmp_path / "ds").as_uri()),
        load_taxonomy("hotel"),
        CurationOptions(test_fraction=0, val_fraction=0),
    )
    reasons = {row["path"]: row["reason"] for row in report["rejected"]}
    assert set(reasons) == {"Room/a.png", "Lobby/b.jpg"}
    assert all(r.startswith("label conflict: near-duplicates (pHash within 6 bits)") for r in reasons.values())
    assert [row["path"] for row in report["kept"]] == ["Room/other.png"]
